"""Which schedule each training batch runs under: one fixed schedule, or one drawn per batch
from a speedup range so that a single checkpoint serves every speedup in it.

>>> s = ScheduleSampler.for_range(30, 2.0, 4.0, window=32)
>>> rng = random.Random(0)
>>> [round(s.sample(rng).speedup, 1) for _ in range(3)]
[3.8, 3.5, 2.9]
>>> s.saved().speedup == s.low.speedup
True
>>> e = ScheduleSampler.for_range(30, 1.0, 3.0, window=32, ends=1.0)  # the two ends only
>>> sorted({round(e.sample(rng).speedup, 1) for _ in range(20)})
[1.0, 3.0]
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from skipdecode.errors import SkipDecodeError, check_share
from skipdecode.schedule import DEFAULT_WINDOW, Schedule


@functools.lru_cache(maxsize=512)
def _solve(num_layers: int, speedup: float, window: int, warmup_layers: int, decay: str,
           drop_order: tuple[int, ...] | None = None, prompt_layers: int | None = None) -> Schedule:
    family = dict(warmup_layers=warmup_layers, drop_order=drop_order, prompt_layers=prompt_layers)
    if speedup == 1:
        return Schedule.full(num_layers, **family)
    return Schedule.for_speedup(num_layers, speedup, window, decay=decay, **family)


def parse_range(text: str) -> tuple[float, float]:
    """'2:4' -> (2.0, 4.0)."""
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise SkipDecodeError(f"--speedup-range {text!r}: expected A:B, e.g. 2:4") from None
    if not 1 <= lo <= hi:
        raise SkipDecodeError(f"--speedup-range {text!r}: need 1 <= A <= B")
    return lo, hi


def check_ends(ends: float) -> float:
    """``--range-ends``'s value, a share in [0, 1]."""
    return check_share(ends, "--range-ends")


@dataclass(frozen=True)
class ScheduleSampler:
    fixed: Schedule | None = None
    low: Schedule | None = None
    """For a range: the schedule at its lower speedup (the one a checkpoint records)."""
    speedup_range: tuple[float, float] | None = None
    window: int = DEFAULT_WINDOW
    warmup_layers: int = 1
    decay: str = "linear"
    drop_order: tuple[int, ...] | None = None
    """The family every drawn schedule shares (``Schedule.family()``): warm-up, drop order, prompt depth."""
    prompt_layers: int | None = None
    ends: float = 0.0
    """For a range: the share of batches drawn at one of its two ends (half each, as the sandwich
    rule of slimmable networks trains the smallest and largest widths); the rest uniform between."""

    @classmethod
    def for_range(cls, num_layers: int, lo: float, hi: float, window: int = DEFAULT_WINDOW, warmup_layers: int = 1,
                  decay: str = "linear", drop_order=None, prompt_layers: int | None = None,
                  ends: float = 0.0) -> "ScheduleSampler":
        most = num_layers / max(1, warmup_layers)
        if hi > most:
            raise SkipDecodeError(f"--speedup-range: {hi:g} is above {most:g}, the most {num_layers} layers allow")
        drop_order = Schedule.full(num_layers, warmup_layers, drop_order).drop_order  # a name, checked -> layers
        check_ends(ends)
        low = _solve(num_layers, round(lo, 2), window, warmup_layers, decay, drop_order, prompt_layers)
        return cls(None, low, (lo, hi), window, warmup_layers, decay, drop_order, prompt_layers, ends)

    @property
    def num_layers(self) -> int:
        return (self.fixed or self.low).num_layers

    def sample(self, rng: random.Random) -> Schedule:
        if self.fixed is not None:
            return self.fixed
        lo, hi = self.speedup_range
        if self.ends and rng.random() < self.ends:  # no extra draw without ends: the same stream as before
            return self._solve(round(rng.choice((lo, hi)), 2))
        s = round(rng.uniform(lo, hi), 2)  # rounded so the solver's cache stays small
        return self._solve(s)

    def _solve(self, speedup: float) -> Schedule:
        return _solve(self.num_layers, speedup, self.window, self.warmup_layers, self.decay, self.drop_order,
                      self.prompt_layers)

    def eval_schedules(self) -> dict[str, Schedule]:
        """Named schedules the periodic evaluation runs (both ends of a range)."""
        if self.fixed is not None:
            return {f"{self.fixed.speedup:.2f}x": self.fixed}
        lo, hi = self.speedup_range
        return {f"{s:.2f}x": self._solve(round(s, 2)) for s in (lo, hi)}

    def saved(self) -> Schedule:
        """The schedule a checkpoint records (``load_model`` and ``generate`` default to it)."""
        return self.fixed if self.fixed is not None else self.low

    def to_dict(self) -> dict:
        out = {"schedule": self.saved().to_dict()}
        if self.speedup_range is not None:  # the window and decay too: the saved low end may be full depth
            out.update(speedup_range=list(self.speedup_range), window=self.window, decay=self.decay)
            if self.ends:  # absent at 0, as in checkpoints from before it
                out["range_ends"] = self.ends
        return out
