"""`skipdecode tune`'s search space and choice (training/tune_space.py): pure Python, no model."""

import random
import sys
from pathlib import Path

import pytest

from skipdecode.runtime.generate import GenerationConfig, GenerationRun, generate_ids
from skipdecode.schedule import Schedule
from skipdecode.training.tune_space import (Candidate, TuneConfig, pick_finalists, realised_speedup, references,
                                            search_space, select)


def test_realised_speedup_is_the_hand_count():
    # n_t = 4, 3, 2, 2, 2: rows of 2, 5 and 1 tokens run 7 + 13 + 4 layers for 8 tokens
    assert realised_speedup(Schedule(6, 4, 2, window=3), [2, 5, 1]) == 6 * 8 / 24
    # power decay, x = t / 4: n = 1 + 4 (1 - x)^2 = 5, 3.25 -> 3, 2, 1.25 -> 1, 1
    power = Schedule(6, 5, 1, window=5, decay="power")
    assert [power.layers_at(t) for t in range(5)] == [5, 3, 2, 1, 1]
    assert realised_speedup(power, [3, 5]) == 6 * 8 / (10 + 12)
    assert realised_speedup(Schedule.constant(30, 10), [1, 17, 40]) == 3.0
    # a 3x schedule over a 32-token window realises less on 26-token outputs, the E2E case
    assert realised_speedup(Schedule.for_speedup(30, 3, 32), [26] * 4) < 2.8
    with pytest.raises(ValueError):
        realised_speedup(Schedule.full(6), [0, 0])


def test_realised_speedup_is_what_the_engine_counts():
    """On generated rows (a numpy fake model, EOS ends rows at various lengths) it equals
    L / GenerationRun.mean_layers, the figure eval and the demo report."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # fake.py: the engine tests' backend
    from fake import FakeBackend

    schedule = Schedule(6, 5, 2, window=7, decay="power")
    prompts = [[3 + i, 5, 7 + 2 * i] for i in range(12)]
    rows = generate_ids(FakeBackend(), prompts, schedule, GenerationConfig(max_new_tokens=20), [2, 5, 9], 0,
                        batch_size=4)
    lengths = [r.tokens for r in rows]
    assert len(set(lengths)) > 2  # the rows did end at different lengths
    assert realised_speedup(schedule, lengths) == pytest.approx(6 / GenerationRun(rows, 1.0).mean_layers, rel=1e-12)


FAMILY = Schedule.full(30, warmup_layers=2, drop_order="even", prompt_layers=12)


def e2e_lengths(n=200, seed=0):
    rng = random.Random(seed)
    return [rng.randint(12, 40) for _ in range(n)]


def test_every_candidate_is_in_the_family_kv_safe_and_meets_the_target():
    lengths = e2e_lengths()
    config = TuneConfig(3.0, prompt_depths=("trained", "full", "step0"))
    cands = search_space(FAMILY, lengths, config)
    assert {c.shape for c in cands} == {"static", "linear", "power"}
    assert {c.schedule.decay for c in cands if c.shape == "power"} == {"power"}
    for c in cands:
        s = c.schedule
        assert (s.warmup_layers, s.drop_order, s.keep_order) == (2, FAMILY.drop_order, FAMILY.keep_order)
        n = [s.layers_at(t) for t in range(80)]
        assert n == sorted(n, reverse=True)  # never grows: each step's layers are a subset of the last's
        assert all(set(s.layers_for_step(t + 1)) <= set(s.layers_for_step(t)) for t in range(80))
        assert s.prompt_depth >= n[0] and set(s.layers_for_step(0)) <= set(s.prompt_layer_set())
        assert c.ref_speedup == realised_speedup(s, lengths)
        assert 3.0 <= c.ref_speedup <= 3.0 * 1.15
        if c.shape == "static":
            assert s.max_layers == s.min_layers == 10
        else:  # the largest min_layers that still meets the target
            assert s.max_layers > s.min_layers and s.window in config.windows
            assert realised_speedup(Schedule(30, s.max_layers, s.min_layers + 1, s.window, 2, s.decay, s.power,
                                             FAMILY.drop_order), lengths) < 3.0
    depths = {c.schedule.prompt_depth for c in cands}
    assert 30 in depths and 12 in depths and any(c.schedule.prompt_depth == c.schedule.max_layers for c in cands)
    keys = [(c.schedule.max_layers, c.schedule.min_layers, c.schedule.window, c.schedule.decay,
             c.schedule.prompt_depth) for c in cands]
    assert len(keys) == len(set(keys))


def test_the_references_are_full_depth_and_the_window_solved_schedule():
    lengths = [26] * 10
    full, default = references(Schedule.full(30), 3.0, lengths)
    assert (full.role, full.schedule.is_full, full.ref_speedup) == ("full", True, 1.0)
    assert default.role == "default" and default.schedule == Schedule.for_speedup(30, 3, 32)
    assert default.ref_speedup < 3.0  # why the search solves on lengths instead
    trained = Schedule(30, 20, 6, window=16, prompt_layers=20)
    assert references(trained, 2.0, lengths)[1].schedule == Schedule.for_speedup(30, 2, 16, prompt_layers=20)
    range_facts = {"speedup_range": [1, 5], "window": 24, "decay": "power"}  # a range model: its trained shape
    assert references(Schedule.full(30), 3.0, lengths, range_facts)[1].schedule == Schedule.for_speedup(
        30, 3, 24, decay="power")


@pytest.mark.parametrize("family, target, message", [
    (Schedule.full(30), 31, "above 30"),
    (Schedule.full(30, warmup_layers=3), 10.5, "above 10"),
])
def test_unreachable_targets_are_refused(family, target, message):
    with pytest.raises(ValueError, match=message):
        search_space(family, [20] * 5, TuneConfig(target))


def test_no_candidate_in_the_band_is_refused():
    with pytest.raises(ValueError, match="--tolerance"):  # 2 layers of 6 is 3x, far above 2.5x
        search_space(Schedule.full(6), [5] * 4, TuneConfig(2.5, shapes=("static",), tolerance=0.05))
    assert search_space(Schedule.full(6), [5] * 4, TuneConfig(2.5, shapes=("static",), tolerance=0.2))


@pytest.mark.parametrize("kw, message", [
    (dict(target_speedup=1.0), "> 1"), (dict(target_speedup=2, shapes=("cubic",)), "shapes"),
    (dict(target_speedup=2, prompt_depths=()), "prompt depths"), (dict(target_speedup=2, windows=(1,)), "windows"),
    (dict(target_speedup=2, finalists=0), "finalists"), (dict(target_speedup=2, holdout=0), "holdout"),
])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        TuneConfig(**kw)


def cand(shape, loss, rouge=None, gen=None, ref=2.0, role="candidate", n=3):
    s = {"static": Schedule.constant(6, n), "full": Schedule.full(6)}.get(shape) or Schedule(6, 5, n - 1, 4, decay=shape)
    return Candidate(s, shape, role, ref_speedup=ref, proxy_loss=loss, gen_speedup=gen, rouge_l=rouge)


def test_finalists_keep_the_best_of_each_shape_then_the_next_best():
    cs = [cand("linear", 1.0), cand("linear", 1.1), cand("linear", 1.2), cand("power", 1.3), cand("static", 2.5),
          cand("linear", 0.5, role="default"), cand("full", 0.1, role="full")]
    assert [c.proxy_loss for c in pick_finalists(cs, 4)] == [1.0, 1.1, 1.3, 2.5]
    assert [c.proxy_loss for c in pick_finalists(cs, 2)] == [1.0, 1.3]
    assert [c.proxy_loss for c in pick_finalists(cs, 9)] == [1.0, 1.1, 1.2, 1.3, 2.5]


def test_the_choice_is_the_best_rouge_meeting_the_target():
    target = 2.0
    slow_best = cand("linear", 0.9, rouge=60.0, gen=1.95)  # best ROUGE-L but short of the target as generated
    full = cand("full", 0.1, rouge=70.0, gen=1.0, role="full")
    a = cand("static", 1.5, rouge=50.0, gen=2.0)
    b = cand("power", 1.2, rouge=52.0, gen=2.3)
    tie = cand("linear", 1.1, rouge=52.0, gen=2.1)  # same ROUGE-L as b, lower proxy loss
    unscored = cand("linear", 0.2)
    got, met_on = select([slow_best, full, a, b, tie, unscored], target)
    assert got is tie and met_on == "generated"
    assert select([slow_best, full, a, b], target)[0] is b
    assert select([slow_best, full, a], target)[0] is a
    default = cand("linear", 0.8, rouge=58.0, gen=2.05, role="default")  # the --speedup schedule may win too
    assert select([slow_best, full, a, default], target)[0] is default
    # none meets it on what it generated: the references' lengths decide
    fallback = cand("linear", 1.0, rouge=40.0, gen=1.8, ref=2.1)
    assert select([slow_best, full, fallback], target) == (slow_best, "references")
    with pytest.raises(ValueError):
        select([full, cand("linear", 1.0, rouge=40.0, gen=1.8, ref=1.9)], target)
    # a shortfall lets a finalist that writes well but ends a little sooner win over one that
    # reaches the target by writing badly (the demo checkpoint: linear 39.4 at 2.79x, static 24.4 at 3.00x)
    bad_static = cand("static", 2.3, rouge=24.4, gen=2.0)
    assert select([slow_best, bad_static], target)[0] is bad_static
    assert select([slow_best, bad_static], target, shortfall=0.05)[0] is slow_best  # 1.95 >= 1.9
    assert select([slow_best, bad_static], target, shortfall=0.02)[0] is bad_static  # 1.95 < 1.96
