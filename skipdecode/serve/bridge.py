"""The engine on its own thread, and the bridge the HTTP handlers reach it through.

The engine is single-threaded: only this thread calls ``add``, ``cancel`` and ``step``. Handlers
put commands into a thread-safe inbox and get their items back through
``loop.call_soon_threadsafe`` into one asyncio queue per HTTP request, once per step, so HTTP
handling never blocks a step and a step never waits for a client. A client that goes away
cancels its requests; the engine frees their rows at its next step.

    bridge = EngineBridge(ServeConfig("build/smollm2"))
    bridge.start()                                  # loads and verifies the graphs on the thread
    sub = await bridge.submit([Request(ids, 32)])   # SkipDecodeError / QueueFull / Unavailable
    async for item in sub: ...                      # Token, Done (with the RowResult) or Failed
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Sequence

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.engine import Engine, EngineConfig
from skipdecode.runtime.request import Request, RowResult, TokenEvent
from skipdecode.schedule import Schedule
from skipdecode.serve.config import ServeConfig
from skipdecode.serve.metrics import Metrics

log = logging.getLogger("skipdecode.serve")
IDLE_WAIT_S = 0.05
"""How long the idle engine thread sleeps between inbox checks (a command wakes it at once)."""
SCHEDULE_CACHE = 64


class Unavailable(SkipDecodeError):
    """The server is loading, failed to load, or is shutting down (503)."""


@dataclass(frozen=True)
class Token:
    event: TokenEvent


@dataclass(frozen=True)
class Done:
    request_id: str
    result: RowResult


@dataclass(frozen=True)
class Failed:
    """The request ended without a result: the server shut down or the backend failed."""

    message: str
    status: int = 503


def load_runtime(config: ServeConfig):
    """The default loader: open the export (hash-verified) on the configured backend."""
    from skipdecode.runtime.api import Runtime

    return Runtime.load(config.export, config.backend, config.device, threads=config.threads)


class Submission:
    """One HTTP request's engine requests; iterate for their items, ``close()`` when done."""

    def __init__(self, bridge: "EngineBridge", ids: Sequence[str]):
        self.bridge = bridge
        self.ids = tuple(ids)
        self.pending = set(ids)
        self.queue: asyncio.Queue[list] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.failed: Failed | None = None

    async def __aiter__(self):
        while self.pending and self.failed is None:
            for item in await self.queue.get():
                if isinstance(item, Done):
                    self.pending.discard(item.request_id)
                elif isinstance(item, Failed):
                    self.failed = item
                yield item
                if self.failed is not None:
                    return

    def close(self) -> None:
        """Cancel whatever has not finished (a disconnect, an error); idempotent."""
        if self.pending:
            self.bridge.cancel(list(self.pending))
            self.pending.clear()

    def push(self, items: list) -> None:
        """From the engine thread."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, items)
        except RuntimeError:  # the loop is closed: nobody listens any more
            self.bridge.cancel(list(self.ids))


class EngineBridge:
    def __init__(self, config: ServeConfig, load: Callable[[ServeConfig], object] = load_runtime,
                 metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        self._load = load
        self.runtime = None
        self.engine: Engine | None = None
        self.error: str | None = None
        self._loaded = threading.Event()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._subs: dict[str, Submission] = {}
        self._cancelling: set[str] = set()
        self._schedules: dict[float, Schedule] = {}
        self._stop = False
        self._drain_deadline: float | None = None
        self._thread = threading.Thread(target=self._main, name="skipdecode-engine", daemon=True)

    # ---- lifecycle ----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """'loading', 'ready', 'draining' (shutting down) or 'failed'."""
        if self.error is not None:
            return "failed"
        if not self._loaded.is_set():
            return "loading"
        return "draining" if self._drain_deadline is not None or self._stop else "ready"

    def start(self) -> None:
        self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def drain(self, timeout: float) -> None:
        """Refuse new requests; those still running after ``timeout`` seconds end with an error.
        Safe to call from a signal handler (it only assigns)."""
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + timeout

    def stop(self, timeout: float | None = None) -> None:
        """Drain (if not already), wait for the in-flight requests or the deadline, end the thread."""
        self.drain(self.config.shutdown_timeout_s if timeout is None else timeout)
        self._wake.set()
        wait = max(0.0, self._drain_deadline - time.monotonic()) + 5.0
        end = time.monotonic() + wait
        while self._subs and time.monotonic() < end and self._thread.is_alive():
            time.sleep(IDLE_WAIT_S)
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    # ---- facts the handlers need (read-only once loaded) ------------------------------------
    @property
    def tokenizer(self):
        return self.runtime.tokenizer

    @property
    def max_len(self) -> int:
        """Positions of a KV row: prompt + new tokens of one request (the export's max_seq)."""
        return self.engine.max_len

    @property
    def default_schedule(self) -> Schedule:
        return self.engine.default_schedule

    def schedule_for(self, speedup: float | None = None, schedule: dict | None = None) -> Schedule:
        """A request's schedule: an explicit one, one solved for ``speedup``, or the default.
        Raises SkipDecodeError unless it can share this engine's batches."""
        if schedule is not None:
            try:
                s = Schedule.from_dict(schedule)
            except (TypeError, ValueError) as e:
                raise SkipDecodeError(f"invalid schedule: {e}") from None
        elif speedup is not None:
            s = self._schedules.get(speedup)
            if s is None:
                s = self._solve(speedup)
                if len(self._schedules) >= SCHEDULE_CACHE:
                    self._schedules.pop(next(iter(self._schedules)))
                self._schedules[speedup] = s
        else:
            return self.engine.default_schedule
        return self.engine.validate(s)

    def _solve(self, speedup: float) -> Schedule:
        return self.runtime.schedule(speedup=speedup)

    # ---- commands (any thread) ----------------------------------------------------------------
    async def submit(self, requests: Sequence[Request]) -> Submission:
        """Queue requests (all or none); raises SkipDecodeError for a bad one, QueueFull when the
        queue is at its limit, Unavailable while loading or shutting down."""
        if self.state != "ready":
            raise Unavailable(self._unavailable())
        sub = Submission(self, [r.request_id for r in requests])
        accepted = sub.loop.create_future()
        self._inbox.put(("add", list(requests), sub, accepted))
        self._wake.set()
        try:
            await accepted
        except asyncio.CancelledError:
            sub.close()
            raise
        return sub

    def cancel(self, ids: Sequence[str]) -> None:
        self._inbox.put(("cancel", list(ids)))
        self._wake.set()

    def _unavailable(self) -> str:
        return {"loading": "the model is loading", "draining": "the server is shutting down",
                "failed": f"the model failed to load: {self.error}"}.get(self.state, "unavailable")

    # ---- the engine thread --------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self.runtime = self._load(self.config)
            self.engine = self._new_engine()
        except Exception as e:  # a bad export: one line for /health and the CLI
            self.error = str(e).splitlines()[0] if str(e) else type(e).__name__
            self._loaded.set()
            return
        self.metrics.ready.set(1)
        self._loaded.set()
        while not self._stop:
            self._wake.clear()
            self._commands()
            self._check_deadline()
            if self.engine.has_work:
                self._step()
            else:
                self.metrics.step(0, 0, 0)
                self._wake.wait(IDLE_WAIT_S)
        self._fail_all("the server shut down")

    def _new_engine(self) -> Engine:
        rt, c = self.runtime, self.config
        schedule = rt.schedule(speedup=c.speedup) if c.speedup else rt.schedule()
        return Engine(rt.backend, rt.tokenizer.eos_ids, rt.tokenizer.pad_id,
                      EngineConfig(max_rows=c.max_batch, max_waiting=c.max_queue), schedule, rt.tokenizer)

    def _commands(self) -> None:
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                break
            if cmd[0] == "add":
                self._add(*cmd[1:])
            else:
                for rid in cmd[1]:
                    if self.engine.cancel(rid):
                        self._cancelling.add(rid)
        self._collect_cancelled()

    def _add(self, requests: list[Request], sub: Submission, accepted: asyncio.Future) -> None:
        added = []
        try:
            if self._drain_deadline is not None:
                raise Unavailable("the server is shutting down")
            for r in requests:
                added.append(self.engine.add(r))
        except (SkipDecodeError, ValueError) as e:
            if not isinstance(e, SkipDecodeError):
                e = SkipDecodeError(str(e))
            for rid in added:
                self.engine.cancel(rid)
                self.engine.pop_result(rid)
            self._resolve(sub, accepted, e)
            return
        for rid in added:
            self._subs[rid] = sub
        self._resolve(sub, accepted, None)

    @staticmethod
    def _resolve(sub: Submission, fut: asyncio.Future, error: Exception | None) -> None:
        def settle():
            if not fut.done():
                fut.set_result(None) if error is None else fut.set_exception(error)
        try:
            sub.loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as e:  # the backend failed: end what is in flight, start a fresh engine
            log.error("skipdecode serve: engine step failed:\n%s", traceback.format_exc())
            self._fail_all(f"the engine failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}", 500)
            self.engine = self._new_engine()
            return
        batches: dict[int, tuple[Submission, list]] = {}
        for ev in events:
            sub = self._subs.get(ev.request_id)
            items = [Token(ev)]
            if ev.finish_reason is not None:
                result = self.engine.pop_result(ev.request_id)
                self._subs.pop(ev.request_id, None)
                if result is not None:
                    self.metrics.finished(result)
                    items.append(Done(ev.request_id, result))
            if sub is not None:
                batches.setdefault(id(sub), (sub, []))[1].extend(items)
        self.metrics.step(len(events), self.engine.num_waiting, self.engine.num_running)  # before anyone hears
        for sub, items in batches.values():
            sub.push(items)
        self._collect_cancelled()

    def _collect_cancelled(self) -> None:
        """Results of cancelled requests appear once their rows are freed (at once if waiting)."""
        for rid in list(self._cancelling):
            result = self.engine.pop_result(rid)
            if result is None:
                continue
            self._cancelling.discard(rid)
            self.metrics.finished(result)
            sub = self._subs.pop(rid, None)
            if sub is not None:
                sub.push([Done(rid, result)])

    def _check_deadline(self) -> None:
        if self._drain_deadline is not None and self._subs and time.monotonic() >= self._drain_deadline:
            self._fail_all("the server shut down before the request finished")

    def _fail_all(self, message: str, status: int = 503) -> None:
        subs = {id(s): s for s in self._subs.values()}
        for rid in list(self._subs):
            if self.engine.cancel(rid):
                self._cancelling.add(rid)
        self._subs.clear()
        for sub in subs.values():
            sub.push([Failed(message, status)])
