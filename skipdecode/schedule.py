"""SkipDecode layer schedules (pure Python, no torch: the edge runtime imports this).

A generated token t (t = 0, 1, ... counted after the prompt) runs ``n_t`` layers: the bottom
``warmup_layers`` and then the top ``n_t - warmup_layers``; the layers between are skipped
(identity). ``n_t`` decays from ``max_layers`` to ``min_layers`` over ``window`` steps and stays
at ``min_layers`` afterwards. Because ``n_t`` never increases, the set of layers run at step t+1
is a subset of the set run at step t, so every layer a token runs already holds the KV of all
earlier tokens: no KV is ever recomputed, and the positions that run a given layer form a prefix.

>>> s = Schedule(num_layers=30, max_layers=15, min_layers=5, window=48)
>>> s.layers_at(0), s.layers_at(47), s.layers_at(1000)
(15, 5, 5)
>>> s.layers_for_step(47)
(0, 26, 27, 28, 29)
>>> round(s.speedup, 2)
3.0
>>> Schedule.from_json(s.to_json()) == s
True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from skipdecode.errors import SkipDecodeError

DECAYS = ("linear", "power")
SCHEDULE_FILE = "skipdecode.json"
"""Beside a fine-tuned checkpoint (and in its exports): ``{"schedule": {...}, ...training facts}``."""


@dataclass(frozen=True)
class Schedule:
    num_layers: int
    """L, the decoder layers of the model."""
    max_layers: int
    """n_0: layers run by the first generated token."""
    min_layers: int
    """Layers run once the window has passed."""
    window: int = 1
    """Steps over which n_t decays from max_layers to min_layers."""
    warmup_layers: int = 1
    """Bottom layers every token runs (the paper uses 1)."""
    decay: str = "linear"
    """'linear', or 'power': n = min + (max - min) * (1 - x) ** power, x = t / (window - 1)."""
    power: float = 2.0
    """Exponent of the power decay (1 is linear; above 1 drops layers sooner)."""

    def __post_init__(self) -> None:
        L = self.num_layers
        if L < 1:
            raise ValueError(f"num_layers must be >= 1, got {L}")
        if self.warmup_layers < 0:
            raise ValueError(f"warmup_layers must be >= 0, got {self.warmup_layers}")
        if self.min_layers < 1:
            raise ValueError(f"min_layers must be >= 1, got {self.min_layers}")
        if self.warmup_layers > self.min_layers:
            raise ValueError(
                f"warmup_layers ({self.warmup_layers}) must be <= min_layers ({self.min_layers})"
            )
        if self.min_layers > self.max_layers:
            raise ValueError(f"min_layers ({self.min_layers}) must be <= max_layers ({self.max_layers})")
        if self.max_layers > L:
            raise ValueError(f"max_layers ({self.max_layers}) must be <= num_layers ({L})")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if not self.power > 0:
            raise ValueError(f"power must be > 0, got {self.power}")

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def full(cls, num_layers: int) -> "Schedule":
        """Every token runs every layer (speedup 1)."""
        return cls(num_layers, num_layers, num_layers, window=1, warmup_layers=min(1, num_layers))

    @classmethod
    def constant(cls, num_layers: int, layers: int, warmup_layers: int = 1) -> "Schedule":
        """Static layer dropping: the same ``layers`` at every step (the baseline)."""
        return cls(num_layers, layers, layers, window=1, warmup_layers=warmup_layers)

    @classmethod
    def for_speedup(
        cls,
        num_layers: int,
        speedup: float,
        window: int,
        warmup_layers: int = 1,
        decay: str = "linear",
        power: float = 2.0,
        spread: float = 0.5,
    ) -> "Schedule":
        """Solve max/min layers so that the mean of n_t over the window is L / speedup.

        The continuous solution keeps max = (1 + spread) * target and min = (1 - spread) * target
        (the paper's 3:1 ratio for spread 0.5), clipped to [warmup, L]; among integer pairs the
        one whose realised mean is closest to the target wins (ties: closest to that shape).
        ``schedule.mean_layers()`` and ``schedule.speedup`` report the realised figures.

        >>> s = Schedule.for_speedup(30, 3, window=48)
        >>> (s.max_layers, s.min_layers, round(s.speedup, 3))
        (15, 5, 3.0)
        >>> Schedule.for_speedup(30, 1, window=48) == Schedule(30, 30, 30, 48)
        True
        """
        L = num_layers
        floor = max(1, warmup_layers)
        if not speedup >= 1:
            raise ValueError(f"speedup must be >= 1, got {speedup}")
        if speedup > L / floor:
            raise ValueError(
                f"speedup {speedup} is above {L / floor:g}, the most that {floor} warm-up "
                f"layer(s) of {L} allow"
            )
        if not 0 <= spread < 1:
            raise ValueError(f"spread must be in [0, 1), got {spread}")
        target = L / speedup
        hi, lo = (1 + spread) * target, (1 - spread) * target
        if hi > L:  # keep the mean: what max loses, min gains
            hi, lo = L, 2 * target - L
        if lo < floor:
            hi, lo = min(L, 2 * target - floor), floor
        best, best_key = None, None
        for mx in range(floor, L + 1):
            for mn in range(floor, mx + 1):
                s = cls(L, mx, mn, window, warmup_layers, decay, power)
                key = (round(abs(s.mean_layers() - target), 9), abs(mx - hi) + abs(mn - lo))
                if best_key is None or key < best_key:
                    best, best_key = s, key
        assert best is not None
        return best

    # ---- the schedule -------------------------------------------------------------------------
    def layers_at(self, step: int) -> int:
        """n_t: how many layers generated token ``step`` runs."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.window <= 1 or step >= self.window - 1:  # a window of 1 is a constant schedule
            return self.min_layers
        x = step / (self.window - 1)
        frac = 1.0 - x if self.decay == "linear" else (1.0 - x) ** self.power
        value = self.min_layers + (self.max_layers - self.min_layers) * frac
        return int(math.floor(value + 0.5 - 1e-9))

    def layers_for_step(self, step: int) -> tuple[int, ...]:
        """The layer indices generated token ``step`` runs, bottom to top."""
        return self.layer_set(self.layers_at(step))

    def layer_set(self, n: int) -> tuple[int, ...]:
        """Bottom warm-up layers plus the top ``n - warmup`` layers."""
        w, L = self.warmup_layers, self.num_layers
        return tuple(range(w)) + tuple(range(L - (n - w), L))

    def steps_running_layer(self, layer: int, num_steps: int) -> int:
        """How many of the first ``num_steps`` generated tokens run ``layer``.

        Those steps are always a prefix ``[0, k)`` since n_t never increases: the training
        forward slices each layer's input to that prefix instead of masking.
        """
        if layer < self.warmup_layers:
            return num_steps
        need = self.num_layers - layer + self.warmup_layers  # n_t needed to reach `layer`
        k = 0
        while k < num_steps and self.layers_at(k) >= need:
            k += 1
        return k

    def mean_layers(self, num_steps: int | None = None) -> float:
        """Mean n_t over the first ``num_steps`` tokens (default: the window)."""
        n = self.window if num_steps is None else num_steps
        if n < 1:
            raise ValueError(f"num_steps must be >= 1, got {n}")
        return sum(self.layers_at(t) for t in range(n)) / n

    @property
    def speedup(self) -> float:
        """The target ratio L / mean(n_t) over the window, as the paper reports it."""
        return self.num_layers / self.mean_layers()

    @property
    def is_full(self) -> bool:
        return self.min_layers == self.num_layers

    def describe(self) -> str:
        if self.is_full:
            return f"full depth ({self.num_layers} layers)"
        if self.min_layers == self.max_layers:
            return (f"static {self.min_layers}/{self.num_layers} layers "
                    f"(warm-up {self.warmup_layers}), speedup {self.speedup:.2f}x")
        return (f"{self.decay} {self.max_layers}->{self.min_layers}/{self.num_layers} layers over "
                f"{self.window} steps (warm-up {self.warmup_layers}), speedup {self.speedup:.2f}x")

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Schedule":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown schedule fields: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Schedule":
        return cls.from_dict(json.loads(text))


def read_schedule_file(folder: str | Path) -> tuple[Schedule | None, dict]:
    """(the schedule, the other training facts) of ``folder``'s skipdecode.json; (None, {}) without one."""
    file = Path(folder) / SCHEDULE_FILE
    if not file.is_file():
        return None, {}
    try:
        data = json.loads(file.read_text())
        if not isinstance(data, dict):
            raise TypeError("expected a JSON object")
        if "schedule" not in data:  # the file's first format: the schedule alone
            return Schedule.from_dict(data), {}
        raw = data["schedule"]
        return (Schedule.from_dict(raw) if raw else None), {k: v for k, v in data.items() if k != "schedule"}
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise SkipDecodeError(f"{file}: invalid schedule ({e})") from None
