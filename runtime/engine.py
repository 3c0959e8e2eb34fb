"""The generation engine: requests join and leave a running batch, each row at its own step.

    engine = Engine(backend, eos_ids=[2], config=EngineConfig(max_rows=8))
    engine.add(Request(prompt_ids, max_new_tokens=32, schedule=Schedule.for_speedup(30, 3, 32)))
    while engine.has_work:
        for event in engine.step(): ...

One step is ``schedule -> execute -> update`` (vLLM v1's EngineCore.step): the scheduler decides
rows and layers (runtime/scheduler.py), the backend runs them, and the update samples each
request's token with its own rng, matches its stop strings incrementally and frees the rows of
finished requests at once. Under SkipDecode each row runs ``its`` schedule's layers for ``its``
step: a row's layer set only shrinks, so every layer it runs already holds its KV, and nothing
is recomputed when requests of different ages and speedups share a batch.

The engine knows token ids only; give it a tokenizer (anything with ``decode(ids)``) for text
events and stop strings. It imports neither torch nor transformers.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.backend import Backend
from skipdecode.runtime.detokenize import TextStream
from skipdecode.runtime.request import Request, RowResult, TokenEvent
from skipdecode.runtime.sampling import sample
from skipdecode.runtime.scheduler import POLICIES, RequestState, Scheduler, StepPlan
from skipdecode.schedule import Schedule


class QueueFull(SkipDecodeError):
    """The engine's waiting queue is at its limit (a server answers 429)."""


@dataclass(frozen=True)
class EngineConfig:
    max_rows: int = 8
    """KV rows: the most requests decoding at once."""
    max_len: int | None = None
    """Positions per row (prompt + new tokens); default: all the backend supports."""
    policy: str = "continuous"
    """'continuous' (join and leave at any step) or 'static' (a batch at a time, held to its end)."""
    max_waiting: int | None = None
    """Refuse new requests (QueueFull) when this many wait; None: no limit."""
    max_prefill_tokens: int | None = None
    """Cap on the padded prompt tokens of one prefill (newcomers beyond it wait a step)."""
    prefill_padding: float = 0.25
    """continuous: newcomers are sorted by prompt length and prefilled in calls whose padded tokens
    stay within (1 + this) x their real tokens (0: one call per distinct length; inf: one call,
    rows in arrival order)."""
    seed: int | None = None
    """Seeds the rng of requests that sample without a seed of their own."""

    def __post_init__(self):
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")


class Engine:
    def __init__(self, backend: Backend, eos_ids: Sequence[int] = (), pad_id: int = 0,
                 config: EngineConfig = EngineConfig(), schedule: Schedule | None = None, tokenizer=None):
        self.backend = backend
        self.config = config
        L = backend.num_layers
        self.default_schedule = schedule or Schedule.full(L)
        self._nestings: Counter[tuple[int, ...]] = Counter()
        """keep_order -> skipping requests in the engine that keep layers in that order."""
        self._check_depth(self.default_schedule)
        self.eos = frozenset(int(e) for e in eos_ids)
        self.pad_id = pad_id
        self.tokenizer = tokenizer
        self.max_len = min(config.max_len or backend.max_positions, backend.max_positions)
        backend.allocate(config.max_rows, self.max_len)
        self.scheduler = Scheduler(L, config.max_rows, self.max_len, pad_id, config.policy, config.max_prefill_tokens,
                                   config.prefill_padding)
        self._rng = np.random.default_rng(config.seed)
        self._requests: dict[str, RequestState] = {}
        self._results: dict[str, RowResult] = {}
        self.last_plan: StepPlan | None = None
        """The plan of the latest step (tests and metrics read it)."""

    # ---- requests ------------------------------------------------------------------------------
    def add(self, request: Request) -> str:
        """Queue a request; it is validated now (a bad one raises SkipDecodeError) and runs when a
        row is free. Returns its id."""
        if request.request_id in self._requests:
            raise SkipDecodeError(f"request id {request.request_id!r} is already in the engine")
        if not request.prompt_ids:
            raise SkipDecodeError("empty prompt: every prompt needs at least one token")
        need = len(request.prompt_ids) + request.max_new_tokens
        if need > self.max_len:
            raise SkipDecodeError(f"prompt of {len(request.prompt_ids)} tokens + {request.max_new_tokens} new "
                                  f"tokens = {need} positions, above the {self.max_len} of a KV row")
        schedule = request.schedule or self.default_schedule
        self._check_depth(schedule, live=True)
        if request.stop and self.tokenizer is None:
            raise SkipDecodeError("stop strings need a tokenizer (Engine(..., tokenizer=...))")
        limit = self.config.max_waiting
        if limit is not None and len(self.scheduler.waiting) >= limit:
            raise QueueFull(f"queue full: {limit} requests waiting")
        seed = request.sampling.seed
        rng = np.random.default_rng(seed if seed is not None else self._rng.integers(2**63))
        text = TextStream(self.tokenizer, request.stop) if self.tokenizer is not None else None
        state = RequestState(request, schedule, rng, text, time.perf_counter())
        self._requests[state.id] = state
        if not schedule.is_full:
            self._nestings[schedule.keep_order] += 1
        self.scheduler.waiting.append(state)
        return state.id

    def cancel(self, request_id: str) -> bool:
        """Stop a request; its row is freed at the next step. False if it is not in the engine."""
        r = self._requests.get(request_id)
        if r is None or r.finish_reason is not None:
            return False
        r.cancelled = True
        if r.row is None:  # still waiting: it never runs
            self.scheduler.waiting.remove(r)
            self._finish(r, "cancelled")
        elif self.config.policy == "static":
            r.finish_reason = "cancelled"  # holds its row until the batch ends
        return True

    def validate(self, schedule: Schedule) -> Schedule:
        """Raise SkipDecodeError unless ``schedule`` can share this engine's batches with its
        default schedule (any thread; ``add`` also checks the requests in the engine)."""
        self._check_depth(schedule)
        return schedule

    def _check_depth(self, s: Schedule, live: bool = False) -> None:
        """Rows ordered by depth run each layer as one range only if their layer sets are nested:
        every skipping schedule in the engine (the default, and with ``live`` each request's) must
        keep layers in the same order (warm-up layers, then the drop order reversed). Full depth
        nests with any."""
        L = self.backend.num_layers
        if s.num_layers != L:
            raise SkipDecodeError(f"schedule is for {s.num_layers} layers, the model has {L}")
        if s.is_full:
            return
        mine = s.keep_order
        others = list(self._nestings) if live else []
        if not self.default_schedule.is_full:
            others.append(self.default_schedule.keep_order)
        for other in others:
            if other != mine:
                raise SkipDecodeError(
                    f"schedule keeps layers in the order {list(mine)} ({s.warmup_layers} warm-up), another in this "
                    f"engine in {list(other)}: rows of one batch must share their warm-up layers and drop order "
                    f"(nested layer sets)")

    @property
    def has_work(self) -> bool:
        return bool(self.scheduler.waiting or self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    def pop_result(self, request_id: str) -> RowResult | None:
        """The result of a finished request (once), else None."""
        return self._results.pop(request_id, None)

    # ---- the step ------------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        plan = self.schedule()
        logits = self.execute(plan)
        return self.update(plan, *logits)

    def schedule(self) -> StepPlan:
        plan = self.scheduler.schedule()
        for r in plan.finished:
            self._finish(r, "cancelled")
        self.last_plan = plan
        return plan

    def execute(self, plan: StepPlan) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Run the plan on the backend -> (prefill logits (n, V), decode logits (B, V))."""
        b = self.backend
        if plan.move is not None:
            m = plan.move
            b.move(m.src, m.dst, m.length, m.layers)
        lp = ld = None
        if plan.prefill is not None:
            p = plan.prefill
            parts = []
            for start, ids, lengths in p.calls():  # each call's time is shared by its rows
                t0 = time.perf_counter()
                parts.append(b.prefill(start, ids, lengths, p.layers))
                share = (time.perf_counter() - t0) / len(lengths)
                for r in p.requests[start - p.start:start - p.start + len(lengths)]:
                    r.prefill_s = share
            lp = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (n, V), request order
        if plan.decode is not None:
            d = plan.decode
            ld = b.decode(d.ids, d.positions, d.ranges)
        return lp, ld

    def update(self, plan: StepPlan, prefill_logits: np.ndarray | None, decode_logits: np.ndarray | None,
               tokens: Sequence[int] | None = None) -> list[TokenEvent]:
        """Sample (or take ``tokens``: prefill rows first, then decode rows), stop, free rows."""
        rows: list[RequestState] = []
        parts = []
        if plan.prefill is not None:
            rows += plan.prefill.requests
            parts.append(prefill_logits)
        if plan.decode is not None:
            rows += plan.decode.requests
            parts.append(decode_logits)
            for r in plan.decode.requests:
                r.fed += 1
        if not rows:
            return []
        logits = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (n, V)
        chosen = self._sample(rows, logits) if tokens is None else np.asarray(tokens, np.int64)
        now = time.perf_counter()
        events = []
        for r, tok in zip(rows, chosen.tolist()):
            if r.finish_reason is not None:  # held in a static batch, or cancelled
                continue
            if not r.out:
                r.first_token_s = now
            r.out.append(tok)
            piece, reason = "", None
            if not r.request.ignore_eos and tok in self.eos:
                reason = "eos"
            if r.text is not None:
                if tok not in self.eos and r.text.push(tok):
                    reason = "stop"
            if reason is None and len(r.out) >= r.request.max_new_tokens:
                reason = "length"
            if r.text is not None:
                piece = r.text.pop(final=reason is not None)
            events.append(TokenEvent(r.id, tok, piece, reason))
            if reason is not None:
                r.finish_reason = reason
                r.finish_s = now
        self._release_finished()
        return events

    def _sample(self, rows: list[RequestState], logits: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), np.int64)
        greedy = [i for i, r in enumerate(rows) if r.sampling.greedy]
        if greedy:
            out[greedy] = logits[greedy].argmax(-1)
        for i, r in enumerate(rows):
            if not r.sampling.greedy:
                out[i] = sample(logits[i:i + 1], r.sampling, r.rng)[0]
        return out

    def _release_finished(self) -> None:
        s = self.scheduler
        if self.config.policy == "static":
            if s.running and all(r.finish_reason is not None for r in s.running):
                for r in list(s.running):
                    s.release(r)
                    self._finish(r, r.finish_reason)
            return
        for r in [r for r in s.running if r.finish_reason is not None]:
            s.release(r)
            self._finish(r, r.finish_reason)

    def _finish(self, r: RequestState, reason: str) -> None:
        r.finish_reason = reason
        r.finish_s = r.finish_s or time.perf_counter()
        del self._requests[r.id]
        if not r.schedule.is_full:
            self._nestings[r.schedule.keep_order] -= 1
            if not self._nestings[r.schedule.keep_order]:
                del self._nestings[r.schedule.keep_order]
        text = "" if r.text is None else r.text.text
        mean = r.schedule.mean_layers(len(r.out)) if r.out else 0.0
        self._results[r.id] = RowResult(list(r.request.prompt_ids), r.out, reason, mean, text,
                                        prefill_s=r.prefill_s, request_id=r.id, arrival_s=r.arrival_s,
                                        first_token_s=r.first_token_s, finish_s=r.finish_s)

    # ---- convenience -----------------------------------------------------------------------------
    def run(self, requests: Iterable[Request], progress=None) -> list[RowResult]:
        """Add ``requests``, step until they are done; results in the same order.
        ``progress(n)`` is called as n requests finish."""
        ids = [self.add(r) for r in requests]
        pending = set(ids)
        while pending:
            if not self.has_work:
                raise RuntimeError("engine idle with requests pending")
            self.step()
            done = [i for i in pending if i in self._results]
            pending.difference_update(done)
            if progress is not None and done:
                progress(len(done))
        return [self._results.pop(i) for i in ids]
