"""SkipDecode layer schedules (pure Python, no torch: the edge runtime imports this).

A generated token t (t = 0, 1, ... counted after the prompt) runs ``n_t`` layers, ``layer_set(n_t)``;
the others are skipped (identity). ``n_t`` decays from ``max_layers`` to ``min_layers`` over
``window`` steps and stays at ``min_layers`` afterwards. The layer sets are nested: the bottom
``warmup_layers`` always run, and as n shrinks the other layers are dropped one at a time in a
fixed ``drop_order`` (by default the paper's: the lower-middle first, so ``layer_set(n)`` is the
warm-up plus the top ``n - warmup_layers``). Because ``n_t`` never increases, the set of layers run
at step t+1 is a subset of the set run at step t, so every layer a token runs already holds the KV
of all earlier tokens: no KV is ever recomputed, and the positions that run a given layer form a
prefix. That holds for any drop order. The prompt runs ``layer_set(max(prompt_layers, n_0))``
(all layers by default): any depth of at least ``n_0`` keeps it, since the prompt then holds the
KV of every layer a generated token runs.

>>> s = Schedule(num_layers=30, max_layers=15, min_layers=5, window=48)
>>> s.layers_at(0), s.layers_at(47), s.layers_at(1000)
(15, 5, 5)
>>> s.layers_for_step(47)
(0, 26, 27, 28, 29)
>>> round(s.speedup, 2)
3.0
>>> Schedule.from_json(s.to_json()) == s
True
>>> s.to_dict()  # the default drop order and prompt depth are left out
{'num_layers': 30, 'max_layers': 15, 'min_layers': 5, 'window': 48, 'warmup_layers': 1, 'decay': 'linear', 'power': 2.0}
>>> e = Schedule.constant(30, 10, drop_order="even", prompt_layers=20)
>>> e.layers_for_step(0)
(0, 3, 5, 7, 10, 14, 17, 21, 25, 29)
>>> len(e.prompt_layer_set()), set(e.layers_for_step(0)) <= set(e.prompt_layer_set())
(20, True)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.io import atomic_write_text

DEFAULT_WINDOW = 32
"""Steps over which n_t decays when neither a flag nor the model's own schedule says: E2E outputs
end after about 26 tokens, so a 32-step window spans nearly all of one."""
DECAYS = ("linear", "power")
DROP_ORDERS = ("paper", "even")
"""Named drop orders: ``paper`` (the default) and ``even`` (see :func:`even_order`)."""
SCHEDULE_FILE = "skipdecode.json"
"""Beside a fine-tuned checkpoint (and in its exports): ``{"schedule": {...}, ...training facts}``.
``schedule`` is the one every command runs by default: the schedule the checkpoint was fine-tuned
under, or the one `skipdecode tune` chose, which then keeps the former as ``trained_schedule``."""
TRAINED_SCHEDULE = "trained_schedule"
"""skipdecode.json's key for the schedule a tuned checkpoint was fine-tuned under."""


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
    drop_order: tuple[int, ...] | None = None
    """The droppable layers (all but the warm-up ones), first dropped first as n shrinks:
    ``layer_set(n)`` keeps the warm-up layers and the last ``n - warmup_layers`` of this order.
    None is the paper's order (``warmup_layers, ..., L - 1``: lower-middle dropped first, the top
    kept longest); a name of DROP_ORDERS or a list is accepted and stored as the layer tuple."""
    prompt_layers: int | None = None
    """Prompt depth: the prompt's tokens run ``layer_set(max(prompt_layers, n_0))`` (step 0's
    layers must hold the prompt's KV, so never fewer than n_0; one value thus serves every speedup
    of a family); None: all layers."""

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
        object.__setattr__(self, "drop_order", _checked_order(self.drop_order, L, self.warmup_layers))
        p = self.prompt_layers
        if p is not None:
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= L:
                raise ValueError(f"prompt_layers must be an integer in [1, num_layers={L}], got {p!r}")
            object.__setattr__(self, "prompt_layers", None if p == L else int(p))

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def full(cls, num_layers: int, warmup_layers: int = 1, drop_order=None,
             prompt_layers: int | None = None) -> "Schedule":
        """Every token runs every layer (speedup 1). The other arguments only record a family
        (``Schedule.full(L, **s.family())``), so that schedules solved from it keep it."""
        return cls(num_layers, num_layers, num_layers, window=1, warmup_layers=min(warmup_layers, num_layers),
                   drop_order=drop_order, prompt_layers=prompt_layers)

    @classmethod
    def constant(cls, num_layers: int, layers: int, warmup_layers: int = 1, drop_order=None,
                 prompt_layers: int | None = None) -> "Schedule":
        """Static layer dropping: the same ``layers`` at every step (the baseline)."""
        return cls(num_layers, layers, layers, window=1, warmup_layers=warmup_layers, drop_order=drop_order,
                   prompt_layers=prompt_layers)

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
        drop_order=None,
        prompt_layers: int | None = None,
    ) -> "Schedule":
        """Solve max/min layers so that the mean of n_t over the window is L / speedup.

        The continuous solution keeps max = (1 + spread) * target and min = (1 - spread) * target
        (the paper's 3:1 ratio for spread 0.5), clipped to [warmup, L]; among integer pairs the
        one whose realised mean is closest to the target wins (ties: closest to that shape).
        ``schedule.mean_layers()`` and ``schedule.speedup`` report the realised figures. Neither
        the drop order nor the prompt depth changes n_t.

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
            for mn in range(mx if window <= 1 else floor, mx + 1):  # one step: static, max = min
                s = cls(L, mx, mn, window, warmup_layers, decay, power)
                key = (round(abs(s.mean_layers() - target), 9), abs(mx - hi) + abs(mn - lo))
                if best_key is None or key < best_key:
                    best, best_key = s, key
        assert best is not None
        if drop_order is None and prompt_layers is None:
            return best
        return replace(best, drop_order=drop_order, prompt_layers=prompt_layers)

    def family(self) -> dict:
        """What a schedule solved for another speedup keeps (``for_speedup(..., **s.family())``)
        so that it runs as this one was trained and shares its batches: warm-up layers, drop order
        and prompt depth."""
        return {"warmup_layers": self.warmup_layers, "drop_order": self.drop_order,
                "prompt_layers": self.prompt_layers}

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
        """The first ``n`` layers of :attr:`keep_order`, bottom to top: the warm-up layers plus the
        ``n - warmup`` droppable layers dropped last."""
        if not 0 <= n <= self.num_layers:
            raise ValueError(f"n must be in [0, {self.num_layers}], got {n}")
        return tuple(sorted(self.keep_order[:n]))

    def prompt_layer_set(self) -> tuple[int, ...]:
        """The layers the prompt's tokens run (a superset of step 0's)."""
        return self.layer_set(self.prompt_depth)

    @property
    def prompt_depth(self) -> int:
        """How many layers the prompt's tokens run: ``max(prompt_layers, n_0)``, or all."""
        return self.num_layers if self.prompt_layers is None else max(self.prompt_layers, self.layers_at(0))

    @property
    def order(self) -> tuple[int, ...]:
        """The drop order in force: ``drop_order``, or the paper's."""
        return self.drop_order if self.drop_order is not None else paper_order(self.num_layers, self.warmup_layers)

    @property
    def keep_order(self) -> tuple[int, ...]:
        """Every layer, kept longest first: the warm-up layers, then the drop order reversed.
        Schedules with the same keep order have nested layer sets, so their rows share batches."""
        return tuple(range(self.warmup_layers)) + self.order[::-1]

    @property
    def entry_layers(self) -> tuple[int, ...]:
        """The layers where some token of this family re-enters the stack after skipping the layer
        below: each l >= 1 that a layer set runs without l - 1 (``entries``). They depend on the
        keep order only, so every schedule of a family (any n, the prompt's depth) shares them.

        >>> Schedule.full(6).entry_layers  # the paper's order: above the bottom droppable layer
        (2, 3, 4, 5)
        >>> Schedule.full(6, drop_order=(2, 4, 1, 5, 3)).entry_layers
        (3, 5)
        """
        rank = {l: i for i, l in enumerate(self.keep_order)}
        return tuple(l for l in range(1, self.num_layers) if rank[l] < rank[l - 1])

    def steps_running_layer(self, layer: int, num_steps: int) -> int:
        """How many of the first ``num_steps`` generated tokens run ``layer``.

        Those steps are always a prefix ``[0, k)`` since n_t never increases and the layer sets
        are nested: the training forward slices each layer's input to that prefix instead of
        masking.
        """
        if layer < self.warmup_layers:
            return num_steps
        need = self.keep_order.index(layer) + 1  # n_t needed to reach `layer`
        k = 0
        while k < num_steps and self.layers_at(k) >= need:
            k += 1
        return k

    def columns_running_layer(self, layer: int, prompt_len: int, num_steps: int) -> int:
        """How many columns of a training row, ``prompt_len`` prompt tokens then ``num_steps``
        generated ones, run ``layer``: always a prefix, since the prompt's layer set contains step
        0's and the sets only shrink. 0 for a layer outside the prompt's set (no token runs it).

        >>> s = Schedule(6, 4, 2, window=4, prompt_layers=5)  # keeps 0, 5, 4, 3, 2, 1 in that order
        >>> [s.columns_running_layer(l, 3, 4) for l in range(6)]
        [7, 0, 3, 4, 6, 7]
        """
        if layer not in self.prompt_layer_set():
            return 0
        return prompt_len + self.steps_running_layer(layer, num_steps)

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
        extra = ""
        if self.drop_order is not None:
            even = self.drop_order == even_order(self.num_layers, self.warmup_layers)
            extra += ", even drop order" if even else ", custom drop order"
        if self.prompt_depth < self.num_layers:
            extra += f", prompt {self.prompt_depth} layers"
        if self.min_layers == self.max_layers:
            return (f"static {self.min_layers}/{self.num_layers} layers "
                    f"(warm-up {self.warmup_layers}{extra}), speedup {self.speedup:.2f}x")
        return (f"{self.decay} {self.max_layers}->{self.min_layers}/{self.num_layers} layers over "
                f"{self.window} steps (warm-up {self.warmup_layers}{extra}), speedup {self.speedup:.2f}x")

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The fields as JSON data; the default drop order and prompt depth (None) are left out,
        so a default schedule writes what it always wrote."""
        d = asdict(self)
        for name in ("drop_order", "prompt_layers"):
            if d[name] is None:
                del d[name]
        if "drop_order" in d:
            d["drop_order"] = list(d["drop_order"])
        return d

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


def entries(layers) -> tuple[int, ...]:
    """The layers of one call's layer set that its tokens enter from a skipped layer below: each
    l >= 1 run without l - 1 (an entry adapter applies to the hidden state just before them).

    >>> entries((0, 3, 4, 5)), entries((2, 3)), entries(range(6))
    ((3,), (2,), ())
    """
    run = set(layers)
    return tuple(sorted(l for l in run if l >= 1 and l - 1 not in run))


def uncovered_entry(layer: int, covered) -> SkipDecodeError:
    """The error of a call that enters ``layer`` (``entries``) where the model's entry adapters,
    at layers ``covered``, have none: the PyTorch reference and the ONNX Runtime backend raise it."""
    return SkipDecodeError(
        f"layer {layer} is entered from a skipped layer under this schedule, but the entry adapters "
        f"cover layers {list(covered)} (trained with another drop order or warm-up)")


def paper_order(num_layers: int, warmup_layers: int) -> tuple[int, ...]:
    """The paper's drop order: the layer above the warm-up first, the top layer last.

    >>> paper_order(6, 1)
    (1, 2, 3, 4, 5)
    """
    return tuple(range(warmup_layers, num_layers))


def even_order(num_layers: int, warmup_layers: int) -> tuple[int, ...]:
    """A drop order whose kept layers stay evenly spread at every depth: the top layer is kept
    longest, then each next kept layer halves the widest gap between kept ones (ties: the lower
    gap); the order drops them in reverse.

    >>> even_order(10, 1)
    (8, 5, 3, 1, 7, 2, 6, 4, 9)
    >>> sorted((0,) + even_order(10, 1)[-4:])  # 5 layers kept
    [0, 2, 4, 6, 9]
    """
    L, w = num_layers, warmup_layers
    kept = sorted({w - 1, L - 1})  # w - 1 is -1 without warm-up: a floor below layer 0
    keep = [L - 1] if L - 1 >= w else []
    while len(keep) < L - w:
        a, b = max(zip(kept, kept[1:]), key=lambda g: (g[1] - g[0], -g[0]))
        mid = (a + b) // 2
        keep.append(mid)
        kept = sorted(kept + [mid])
    return tuple(reversed(keep))


def _checked_order(order, num_layers: int, warmup_layers: int) -> tuple[int, ...] | None:
    """A drop order as stored: None for the paper's (named or listed), else the layer tuple."""
    if order is None:
        return None
    if isinstance(order, str):
        if order not in DROP_ORDERS:
            raise ValueError(f"drop_order must be one of {DROP_ORDERS} or a list of layers, got {order!r}")
        order = even_order(num_layers, warmup_layers) if order == "even" else None
        return order
    try:
        order = tuple(int(l) for l in order)
    except (TypeError, ValueError):
        raise ValueError(f"drop_order must be a name or a list of layer indices, got {order!r}") from None
    paper = paper_order(num_layers, warmup_layers)
    if sorted(order) != list(paper):
        raise ValueError(f"drop_order must list each droppable layer once, {warmup_layers}..{num_layers - 1} "
                         f"(the {warmup_layers} warm-up layer(s) are never dropped), got {list(order)}")
    return None if order == paper else order


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


def read_trained_schedule(folder: str | Path) -> Schedule | None:
    """The schedule ``folder``'s checkpoint was fine-tuned under: skipdecode.json's
    ``trained_schedule`` once `skipdecode tune` has replaced its ``schedule``, else ``schedule``
    (what resuming or extending the training must match)."""
    return trained_schedule(*read_schedule_file(folder), folder)


def trained_schedule(schedule: Schedule | None, facts: Mapping, folder: str | Path) -> Schedule | None:
    """:func:`read_trained_schedule` from a skipdecode.json already read (``read_schedule_file``)."""
    if TRAINED_SCHEDULE not in facts:
        return schedule
    try:
        return Schedule.from_dict(facts[TRAINED_SCHEDULE]) if facts[TRAINED_SCHEDULE] else None
    except (TypeError, ValueError) as e:
        raise SkipDecodeError(f"{Path(folder) / SCHEDULE_FILE}: invalid {TRAINED_SCHEDULE} ({e})") from None


def default_shape(own: Schedule | None, facts: Mapping | None = None, window: int | None = None,
                  decay: str | None = None) -> dict:
    """The shape a speedup is solved in (``for_speedup(L, S, **shape)``): ``window`` and ``decay``
    where given (the flags), else the
    ``window``, ``decay`` and ``power`` of ``own`` (the schedule a checkpoint or export runs by
    default), unless ``own`` is full depth. A full-depth own schedule records window 1, over which
    any speedup would solve to static dropping: a speedup-range model's (its full-depth low end)
    takes the window and decay it was trained over from ``facts`` (its skipdecode.json, beside
    ``speedup_range``), a 1x model's is DEFAULT_WINDOW, linear. So a static-trained model is asked
    for static schedules, and a decay-trained one for its own decay.

    >>> default_shape(None)["window"], default_shape(Schedule.full(30))["window"]
    (32, 32)
    >>> default_shape(Schedule.for_speedup(30, 3, 16, decay="power"))
    {'window': 16, 'decay': 'power', 'power': 2.0}
    >>> default_shape(Schedule.full(30), {"speedup_range": [1, 5], "window": 24, "decay": "power"})["window"]
    24
    >>> default_shape(Schedule.constant(30, 10))["window"], default_shape(Schedule.full(30), window=8)["window"]
    (1, 8)
    """
    facts = facts or {}
    if own is not None and not own.is_full:
        shape = {"window": own.window, "decay": own.decay, "power": own.power}
    elif "speedup_range" in facts:  # (older range checkpoints record neither window nor decay)
        shape = {"window": int(facts.get("window", DEFAULT_WINDOW)), "decay": facts.get("decay", "linear"),
                 "power": 2.0}
    else:
        shape = {"window": DEFAULT_WINDOW, "decay": "linear", "power": 2.0}
    if window is not None:
        shape["window"] = window
    if decay is not None:
        shape["decay"] = decay
    return shape


def write_schedule_file(folder: str | Path, schedule: Schedule | None, facts: dict) -> Path:
    """Write ``folder``'s skipdecode.json (atomically): ``schedule`` first, then the other facts."""
    file = Path(folder) / SCHEDULE_FILE
    data = {"schedule": schedule.to_dict() if schedule is not None else None, **facts}
    atomic_write_text(file, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return file
