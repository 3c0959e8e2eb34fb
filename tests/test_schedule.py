"""Schedule properties: monotone, budget met, bounds enforced, prefix structure, JSON."""

import pytest
from hypothesis import given, settings, strategies as st

from skipdecode.schedule import Schedule


@st.composite
def schedules(draw):
    L = draw(st.integers(1, 48))
    warm = draw(st.integers(0, min(3, L)))
    mn = draw(st.integers(max(1, warm), L))
    mx = draw(st.integers(mn, L))
    return Schedule(L, mx, mn, draw(st.integers(1, 80)), warm, draw(st.sampled_from(["linear", "power"])),
                    draw(st.floats(0.25, 4.0)))


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
