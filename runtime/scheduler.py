"""The engine's first phase: which requests run this step, in which KV rows, through which layers.

The output is plain data (vLLM v1's SchedulerOutput): moves that keep the rows ordered by depth,
one prefill of newcomers over their own row range, one decode of every running row. A prefill runs
one layer set for all its rows, so a step admits only newcomers whose schedules share the prompt
layer set of the first one waiting (the others wait for a later step, in order). The graphs take
right-padded prompts, so the continuous policy sorts a prefill's newcomers by prompt length and
splits them into calls whose padded tokens stay within ``1 + prefill_padding`` of their real ones
(vLLM packs prompts without padding; padding to the longest of 24 chat prompts wasted 44% of the
prefill). Two policies:

- ``continuous``: a request is admitted as soon as a KV row is free; finished rows leave at once.
- ``static``: a batch is admitted only when the engine is empty, and rows that finish keep their
  row (fed padding under the batch's schedule) until the whole batch ends: the batcher this
  engine replaces, kept as a benchmark baseline and for calibration's fixed-shape shards.

KV rows and positions are counted before admission: a request whose prompt and new tokens do not
fit one row is refused when added; one that fits waits for a free row. Nothing overflows mid-flight.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from skipdecode.runtime.backend import Range
from skipdecode.runtime.feeds import right_pad
from skipdecode.runtime.request import Request
from skipdecode.runtime.sampling import SamplingConfig
from skipdecode.runtime.slots import layer_ranges, place
from skipdecode.schedule import Schedule

POLICIES = ("continuous", "static")


class RequestState:
    """A request inside the engine."""

    def __init__(self, request: Request, schedule: Schedule, rng: np.random.Generator, text, arrival: float):
        self.request = request
        self.id = request.request_id
        self.schedule = schedule
        self.rng = rng
        self.text = text  # TextStream | None
        self.arrival_s = arrival
        self.first_token_s = 0.0
        self.finish_s = 0.0
        self.prefill_s = 0.0
        self.out: list[int] = []
        self.row: int | None = None
        self.finish_reason: str | None = None
        self.cancelled = False
        self.fed = 0
        """Generated tokens fed back through the layers so far (a held row keeps counting)."""

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def step(self) -> int:
        """t of the next token fed through the layers (while running: the newest generated one)."""
        return self.fed

    @property
    def position(self) -> int:
        return self.prompt_len + self.step

    @property
    def sampling(self) -> SamplingConfig:
        return self.request.sampling


@dataclass
class Prefill:
    start: int
    requests: list[RequestState]
    ids: np.ndarray  # (n, S) int64, right-padded
    lengths: np.ndarray  # (n,) int64
    layers: tuple[int, ...]
    """The prompt layer set every request of this prefill shares (``schedule.prompt_layer_set()``)."""
    splits: tuple[int, ...] = ()
    """Where the backend calls split the requests (ascending, inside (0, n)); each call is padded
    to its own longest prompt. Empty: one call."""

    def calls(self):
        """(start row, ids (k, S_k), lengths (k,)) of each backend call, in request order."""
        bounds = (0, *self.splits, len(self.requests))
        for a, b in zip(bounds, bounds[1:]):
            lengths = self.lengths[a:b]
            yield self.start + a, self.ids[a:b, :int(lengths.max())], lengths


@dataclass
class Decode:
    requests: list[RequestState]
    """In KV row order: request i sits in row i."""
    ids: np.ndarray  # (B,) int64
    positions: np.ndarray  # (B,) int64
    layer_sets: list[tuple[int, ...]]
    ranges: list[Range]


@dataclass
class Move:
    src: list[int]
    dst: list[int]
    length: int
    layers: tuple[int, ...]


@dataclass
class StepPlan:
    move: Move | None = None
    prefill: Prefill | None = None
    decode: Decode | None = None
    finished: list[RequestState] = field(default_factory=list)
    """Requests dropped before this step (cancelled): they need a result, not a call."""


class Scheduler:
    def __init__(self, num_layers: int, max_rows: int, max_len: int, pad_id: int, policy: str = "continuous",
                 max_prefill_tokens: int | None = None, prefill_padding: float = 0.25):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.num_layers, self.max_rows, self.max_len, self.pad_id = num_layers, max_rows, max_len, pad_id
        self.policy = policy
        self.max_prefill_tokens = max_prefill_tokens
        """At most this many (padded) prompt tokens per prefill; one request always fits."""
        if not prefill_padding >= 0:
            raise ValueError(f"prefill_padding must be >= 0, got {prefill_padding}")
        self.prefill_padding = prefill_padding
        self.waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []
        """Admitted and not yet released, in no particular order (rows say where they are)."""

    # ---- the plan -----------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        plan = StepPlan()
        gone = [r for r in self.running if r.cancelled and self.policy == "continuous"]
        for r in gone:
            self.release(r)
        plan.finished = gone
        decoding = self.running
        if decoding:
            sets_of = {r.id: r.schedule.layers_for_step(r.step) for r in decoding}  # this step's layer sets
            plan.move = self._place(decoding, sets_of)
            decoding = sorted(decoding, key=lambda r: r.row)
            sets = [sets_of[r.id] for r in decoding]
            ids = np.array([self.pad_id if r.finish_reason else r.out[-1] for r in decoding], np.int64)
            plan.decode = Decode(decoding, ids, np.array([r.position for r in decoding], np.int64), sets,
                                 layer_ranges(sets, self.num_layers))
        plan.prefill = self._admit(len(decoding))
        return plan

    def _place(self, rows: Sequence[RequestState], sets_of: dict[str, tuple[int, ...]]) -> Move | None:
        """Order the decoding rows by depth in rows [0, len(rows)) with as few moves as possible."""
        depths = [len(sets_of[r.id]) for r in rows]
        target = place(depths, [r.row for r in rows])
        moved = [(r.row, t, r) for r, t in zip(rows, target) if r.row != t]
        for r, t in zip(rows, target):
            r.row = t
        if not moved:
            return None
        layers = sorted({l for *_, r in moved for l in sets_of[r.id]})
        return Move([s for s, _, _ in moved], [t for _, t, _ in moved], max(r.position for *_, r in moved),
                    tuple(layers))

    def _admit(self, first_free: int) -> Prefill | None:
        if not self.waiting or (self.policy == "static" and self.running):
            return None
        free = self.max_rows - first_free
        batch: list[RequestState] = []
        later: list[RequestState] = []  # another prompt layer set: a later prefill
        longest = 0
        layers: tuple[int, ...] | None = None
        while self.waiting and len(batch) < free:
            r = self.waiting[0]  # a cancelled request has already left the queue (Engine.cancel)
            if layers is not None and r.schedule.prompt_layer_set() != layers:
                later.append(self.waiting.popleft())
                continue
            S = max(longest, r.prompt_len)
            if batch and self.max_prefill_tokens and (len(batch) + 1) * S > self.max_prefill_tokens:
                break
            if batch and self.policy == "static":
                # held rows keep decoding until the longest request ends: every row must fit that
                need = S + max(x.request.max_new_tokens for x in (*batch, r))
                if need > self.max_len:
                    break
            batch.append(self.waiting.popleft())
            longest = S
            layers = r.schedule.prompt_layer_set()
        self.waiting.extendleft(reversed(later))
        if not batch:
            return None
        splits: tuple[int, ...] = ()
        if self.policy == "continuous" and self.prefill_padding != float("inf"):
            # (the static batcher keeps its one padded call, in arrival order: calibration's shards)
            batch.sort(key=lambda r: r.prompt_len)
            splits = padding_splits([r.prompt_len for r in batch], self.prefill_padding)
        for i, r in enumerate(batch):
            r.row = first_free + i
            self.running.append(r)
        ids, lengths = right_pad([r.request.prompt_ids for r in batch], self.pad_id)
        return Prefill(first_free, batch, ids, lengths, layers, splits)

    # ---- bookkeeping --------------------------------------------------------------------------
    def release(self, r: RequestState) -> None:
        self.running.remove(r)
        r.row = None


def padding_splits(lengths: Sequence[int], slack: float) -> tuple[int, ...]:
    """Split ascending prompt ``lengths`` into runs, each padded to its last (longest), whose padded
    tokens stay within ``(1 + slack)`` times their real tokens; returns the run boundaries.

    >>> padding_splits([40, 42, 44, 150, 160, 250], 0.25)
    (3, 5)
    >>> padding_splits([10, 20, 30], 0.0), padding_splits([10, 20, 30], float("inf"))
    ((1, 2), ())
    """
    splits, start, real = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start + 1) * n > (1 + slack) * (real + n):
            splits.append(i)
            start, real = i, 0
        real += n
    return tuple(splits)
