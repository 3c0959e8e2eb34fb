"""Schedule flags (skipdecode/cli/options.py): --drop-order and --prompt-layers, and a checkpoint's
family (warm-up layers, drop order, prompt depth) kept by every schedule the flags solve."""

import argparse

import pytest

from skipdecode.cli.options import add_schedule_arguments, build_schedule, drop_order_arg
from skipdecode.schedule import Schedule

TRAINED = Schedule(6, 4, 2, window=4, drop_order="even", prompt_layers=4)


def flags(*argv):
    p = argparse.ArgumentParser()
    add_schedule_arguments(p)
    return p.parse_args(list(argv))


def test_drop_order_takes_a_name_or_a_list():
    assert flags("--drop-order", "even").drop_order == "even"
    assert flags("--drop-order", "5,4,3,2,1").drop_order == (5, 4, 3, 2, 1)
    with pytest.raises(argparse.ArgumentTypeError, match="paper or even or a comma list"):
        drop_order_arg("top")


def test_solved_schedules_keep_the_checkpoints_family():
    s = build_schedule(flags("--speedup", "2"), 6, TRAINED)
    assert s.family() == TRAINED.family() and s.speedup == pytest.approx(2, abs=0.3)
    assert build_schedule(flags("--max-layers", "5", "--min-layers", "3"), 6, TRAINED).family() == TRAINED.family()
    assert build_schedule(flags("--speedup", "1"), 6, TRAINED) == Schedule.full(6, **TRAINED.family())
    assert build_schedule(flags(), 6, TRAINED) == TRAINED
    assert build_schedule(flags(), 6) == Schedule.full(6)


def test_flags_override_the_family():
    s = build_schedule(flags("--speedup", "2", "--drop-order", "paper", "--prompt-layers", "5"), 6, TRAINED)
    assert s.drop_order is None and s.prompt_layers == 5
    assert build_schedule(flags("--prompt-layers", "3"), 6, TRAINED) == Schedule(6, 4, 2, 4, drop_order="even",
                                                                                  prompt_layers=3)
    other = build_schedule(flags("--speedup", "2", "--warmup-layers", "2"), 6, TRAINED)
    assert other.warmup_layers == 2 and other.drop_order is None  # the even order of 1 warm-up layer no longer fits
    assert other.prompt_layers == 4


def test_a_full_depth_checkpoint_solves_speedups_over_the_default_window():
    """A 1x or any-budget checkpoint records full depth (window 1); --speedup then decays over the
    default 32 steps, as it was trained, not over 1 step (which would be static dropping)."""
    full = Schedule.full(30)
    s = build_schedule(flags("--speedup", "3"), 30, full)
    assert s == Schedule.for_speedup(30, 3, window=32) and s.max_layers > s.min_layers
    static = Schedule.constant(30, 10)  # a static checkpoint keeps its one-step "window": static stays static
    again = build_schedule(flags("--speedup", "3"), 30, static)
    assert again.max_layers == again.min_layers


def test_a_speedup_keeps_the_checkpoints_decay():
    """A power-decay checkpoint asked for another speedup decays as it was trained (it used to
    solve a linear decay unless --decay was given again); --decay and --window still override."""
    power = Schedule.for_speedup(30, 3, window=16, decay="power")
    s = build_schedule(flags("--speedup", "2"), 30, power)
    assert s == Schedule.for_speedup(30, 2, window=16, decay="power")
    assert build_schedule(flags("--speedup", "2", "--decay", "linear"), 30, power).decay == "linear"
    assert build_schedule(flags("--speedup", "2", "--window", "8"), 30, power).window == 8


@pytest.mark.parametrize("facts, window, decay", [
    ({"speedup_range": [1, 5], "window": 16, "decay": "power"}, 16, "power"),
    ({"speedup_range": [1, 5]}, 32, "linear"),   # a range checkpoint older than its recorded window and decay
    ({"window": 16, "decay": "power"}, 32, "linear"),   # not a range model: the facts are not its shape
])
def test_a_range_checkpoint_solves_speedups_in_the_shape_it_was_trained_over(facts, window, decay):
    """A speedup-range model's own schedule is its full-depth low end; --speedup then decays over
    the window and decay of the range (skipdecode.json's facts), not over DEFAULT_WINDOW, linear."""
    s = build_schedule(flags("--speedup", "3"), 30, Schedule.full(30), facts)
    assert s == Schedule.for_speedup(30, 3, window=window, decay=decay)
    assert build_schedule(flags(), 30, Schedule.full(30), facts).is_full
