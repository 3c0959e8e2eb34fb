"""Schedule properties: monotone, budget met, bounds enforced, nested layer sets and prefix
structure for every drop order and prompt depth, JSON."""

import pytest
from hypothesis import given, settings, strategies as st

from skipdecode.errors import SkipDecodeError
from skipdecode.schedule import (Schedule, entries, even_order, paper_order, read_schedule_file,
                                 read_trained_schedule, write_schedule_file)


@st.composite
def drop_orders(draw, L, warm):
    """None (the paper's), a name, or any permutation of the droppable layers."""
    return draw(st.one_of(st.none(), st.sampled_from(["paper", "even"]), st.permutations(range(warm, L))))


@st.composite
def schedules(draw):
    L = draw(st.integers(1, 48))
    warm = draw(st.integers(0, min(3, L)))
    mn = draw(st.integers(max(1, warm), L))
    mx = draw(st.integers(mn, L))
    s = Schedule(L, mx, mn, draw(st.integers(1, 80)), warm, draw(st.sampled_from(["linear", "power"])),
                 draw(st.floats(0.25, 4.0)), draw(drop_orders(L, warm)))
    prompt = draw(st.one_of(st.none(), st.integers(1, L)))
    return Schedule.from_dict({**s.to_dict(), **({} if prompt is None else {"prompt_layers": prompt})})


@settings(max_examples=200, deadline=None)
@given(schedules())
def test_monotone_and_bounded(s):
    prev = None
    for t in range(s.window + 5):
        n = s.layers_at(t)
        assert s.min_layers <= n <= s.max_layers
        if prev is not None:
            assert n <= prev, "n_t must never increase"
        layers = s.layers_for_step(t)
        assert len(layers) == n == len(set(layers))
        assert layers[: s.warmup_layers] == tuple(range(s.warmup_layers))
        assert all(0 <= l < s.num_layers for l in layers)
        if prev_layers := (s.layers_for_step(t - 1) if t else None):
            assert set(layers) <= set(prev_layers), "a skipped layer may never run again (no KV recompute)"
        prev = n
    assert s.layers_at(s.window + 100) == s.min_layers
    if s.window > 1:
        assert s.layers_at(0) == s.max_layers


@settings(max_examples=200, deadline=None)
@given(schedules(), st.integers(0, 60))
def test_steps_running_layer_is_the_prefix_count(s, steps):
    for l in range(s.num_layers):
        k = s.steps_running_layer(l, steps)
        assert [l in s.layers_for_step(t) for t in range(steps)] == [True] * k + [False] * (steps - k)
        runs = [l in s.prompt_layer_set()] * 3 + [l in s.layers_for_step(t) for t in range(steps)]
        c = s.columns_running_layer(l, 3, steps)  # a training row: 3 prompt columns, then the steps
        assert runs == [True] * c + [False] * (len(runs) - c)


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_layer_sets_are_nested_and_kv_safe_in_every_order(s):
    """n -> layer_set(n) is a chain of subsets whose order is the drop order; a token at step t
    runs a layer only if the prompt and every earlier token ran it (its KV is whole)."""
    L, w = s.num_layers, s.warmup_layers
    for n in range(w, L):
        small, big = set(s.layer_set(n)), set(s.layer_set(n + 1))
        assert len(small) == n and small < big and big - small == {s.order[L - n - 1]}
    assert set(s.layer_set(w)) == set(range(w)) and s.layer_set(L) == tuple(range(L))
    prompt = set(s.prompt_layer_set())
    assert len(prompt) == s.prompt_depth == max(s.prompt_layers or L, s.layers_at(0))
    ran = [prompt]  # the layer sets of the prompt and of each earlier step
    for t in range(s.window + 3):
        now = set(s.layers_for_step(t))
        assert all(now <= before for before in ran), "a layer would read KV that an earlier position skipped"
        ran.append(now)
    assert Schedule.from_json(s.to_json()) == s and Schedule.from_dict(s.to_dict()) == s


@settings(max_examples=200, deadline=None)
@given(schedules())
def test_entry_layers_are_where_the_family_re_enters(s):
    """A family's entry layers (one entry adapter each) are exactly the layers that some layer set
    of it, at any depth, runs without the layer below: every step's and the prompt's entries are
    among them."""
    found = set()
    for n in range(s.num_layers + 1):
        run = s.layer_set(n)
        assert set(entries(run)) == {l for l in run if l > 0 and l - 1 not in run}
        found |= set(entries(run))
    assert s.entry_layers == tuple(sorted(found))
    for layers in [s.prompt_layer_set()] + [s.layers_for_step(t) for t in range(s.window + 1)]:
        assert set(entries(layers)) <= set(s.entry_layers)
    assert Schedule.full(s.num_layers, **s.family()).entry_layers == s.entry_layers  # shared by the family


def test_default_order_is_the_papers_and_serialises_as_before():
    s = Schedule(30, 15, 5, 48)
    assert s.layer_set(10) == (0, *range(21, 30)) and s.prompt_layer_set() == tuple(range(30))
    assert s.to_dict() == dict(num_layers=30, max_layers=15, min_layers=5, window=48, warmup_layers=1,
                               decay="linear", power=2.0)
    for same in ("paper", list(paper_order(30, 1)), None):  # named or listed, the default is stored as None
        assert Schedule(30, 15, 5, 48, drop_order=same) == s
    assert Schedule(30, 15, 5, 48, prompt_layers=30) == s  # all layers is the default depth
    assert Schedule(30, 15, 5, 48, drop_order="even").drop_order == even_order(30, 1)


def test_orders_and_prompt_depth_round_trip_and_describe():
    s = Schedule(8, 6, 3, 5, warmup_layers=2, drop_order=[7, 2, 3, 4, 6, 5], prompt_layers=7)
    assert s.layer_set(3) == (0, 1, 5) and s.layers_for_step(0) == (0, 1, 3, 4, 5, 6)
    assert s.prompt_layer_set() == (0, 1, 2, 3, 4, 5, 6)
    assert s.to_dict()["drop_order"] == [7, 2, 3, 4, 6, 5] and s.to_dict()["prompt_layers"] == 7
    assert Schedule.from_json(s.to_json()) == s
    assert "custom drop order, prompt 7 layers" in s.describe()
    assert "even drop order" in Schedule.constant(8, 3, drop_order="even").describe()


@pytest.mark.parametrize("order, match", [
    ([1, 2, 3, 4], "each droppable layer once"),   # 5 missing
    ([0, 1, 2, 3, 4, 5], "each droppable layer once"),  # the warm-up layer 0 listed
    ([1, 1, 2, 3, 4], "each droppable layer once"),
    ("bottom", "drop_order must be one of"),
    ([1.5, None], "a name or a list"),
])
def test_bad_drop_orders_are_refused(order, match):
    with pytest.raises(ValueError, match=match):
        Schedule(6, 4, 2, 4, drop_order=order)


def test_prompt_depth_is_at_least_step_zeros_and_carries_over_to_solved_schedules():
    for bad in (0, 31, 2.5, True):
        with pytest.raises(ValueError, match=r"prompt_layers must be an integer in \[1, num_layers=30\]"):
            Schedule(30, 15, 5, 48, prompt_layers=bad)
    trained = Schedule.for_speedup(30, 3, 32, drop_order="even", prompt_layers=12)
    assert trained.max_layers == trained.prompt_depth == 15  # never below n_0
    fast = Schedule.for_speedup(30, 5, 32, **trained.family())
    assert fast.prompt_depth == 12 > fast.layers_at(0) and fast.drop_order == trained.drop_order
    full = Schedule.full(30, **trained.family())
    assert full.is_full and full.prompt_depth == 30 and Schedule.for_speedup(30, 3, 32, **full.family()) == trained
    assert Schedule.full(30, **Schedule(30, 15, 5, 48).family()) == Schedule.full(30)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 40), st.floats(1.0, 6.0), st.integers(1, 64), st.integers(0, 2),
       st.sampled_from(["linear", "power"]))
def test_for_speedup_meets_budget(L, speedup, window, warm, decay):
    floor = max(1, warm)
    if speedup > L / floor:
        with pytest.raises(ValueError, match="warm-up"):
            Schedule.for_speedup(L, speedup, window, warm, decay)
        return
    s = Schedule.for_speedup(L, speedup, window, warm, decay)
    target = L / speedup
    # integer layer counts: the realised mean is the closest reachable, within one layer
    assert abs(s.mean_layers() - target) <= 1.0
    assert s.num_layers == L and s.warmup_layers == warm and s.window == window


def test_paper_like_settings():
    s = Schedule.for_speedup(30, 3, window=48)
    assert (s.max_layers, s.min_layers) == (15, 5) and s.mean_layers() == 10.0
    assert Schedule.for_speedup(24, 2, window=64).mean_layers() == pytest.approx(12, abs=0.1)
    full = Schedule.full(30)
    assert full.is_full and full.speedup == 1 and full.layers_for_step(7) == tuple(range(30))
    static = Schedule.constant(30, 10)
    assert static.layers_at(0) == static.layers_at(99) == 10 and static.speedup == 3


@pytest.mark.parametrize("kwargs, bound", [
    (dict(num_layers=12, max_layers=4, min_layers=6), "min_layers"),
    (dict(num_layers=12, max_layers=6, min_layers=2, warmup_layers=3), "warmup_layers"),
    (dict(num_layers=12, max_layers=13, min_layers=2), "max_layers"),
    (dict(num_layers=12, max_layers=6, min_layers=0, warmup_layers=0), "min_layers"),
    (dict(num_layers=12, max_layers=6, min_layers=2, window=0), "window"),
    (dict(num_layers=12, max_layers=6, min_layers=2, decay="cosine"), "decay"),
])
def test_impossible_settings_name_the_bound(kwargs, bound):
    with pytest.raises(ValueError, match=bound):
        Schedule(**kwargs)


def test_for_speedup_rejects_bad_targets():
    with pytest.raises(ValueError, match="speedup must be >= 1"):
        Schedule.for_speedup(30, 0.5, 32)
    with pytest.raises(ValueError, match="warm-up"):
        Schedule.for_speedup(30, 16, 32, warmup_layers=2)


def test_power_decay_drops_sooner_than_linear():
    lin = Schedule(30, 20, 4, 32, decay="linear")
    pw = Schedule(30, 20, 4, 32, decay="power", power=2.0)
    assert all(pw.layers_at(t) <= lin.layers_at(t) for t in range(40))
    assert pw.mean_layers() < lin.mean_layers()


def test_json_round_trip():
    s = Schedule(30, 20, 4, 32, 2, "power", 1.5)
    assert Schedule.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="unknown schedule fields"):
        Schedule.from_dict({**s.to_dict(), "foo": 1})


def test_a_tuned_schedule_file_keeps_the_trained_schedule(tmp_path):
    """skipdecode.json's ``schedule`` is what commands run; ``trained_schedule``, once `tune` has
    written one, is what training resumes under (null: a checkpoint trained without one)."""
    trained, tuned = Schedule.for_speedup(6, 2, 8), Schedule.constant(6, 3)
    write_schedule_file(tmp_path, trained, {"step": 4})
    assert read_schedule_file(tmp_path) == (trained, {"step": 4}) and read_trained_schedule(tmp_path) == trained
    write_schedule_file(tmp_path, tuned, {"step": 4, "trained_schedule": trained.to_dict()})
    assert read_schedule_file(tmp_path)[0] == tuned and read_trained_schedule(tmp_path) == trained
    write_schedule_file(tmp_path, tuned, {"trained_schedule": None})
    assert read_trained_schedule(tmp_path) is None
    write_schedule_file(tmp_path, tuned, {"trained_schedule": {"num_layers": 6}})
    with pytest.raises(SkipDecodeError, match="invalid trained_schedule"):
        read_trained_schedule(tmp_path)
    assert read_trained_schedule(tmp_path / "none") is None
