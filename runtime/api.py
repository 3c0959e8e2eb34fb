"""`Runtime`: the deployable API over an export (ONNX Runtime) or engine folder (TensorRT).

    rt = Runtime.load("build/smollm2", backend="onnxruntime")
    rows = rt.generate(["name[The Eagle], eatType[pub]"], speedup=3, max_new_tokens=32)
    for event in rt.stream("Hello", speedup=2): print(event.text, end="")

Imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.engine import Engine, EngineConfig
from skipdecode.runtime.generate import GenerationConfig, GenerationRun, generate_ids
from skipdecode.runtime.manifest import MANIFEST
from skipdecode.runtime.request import Request, RowResult
from skipdecode.runtime.sampling import SamplingConfig
from skipdecode.schedule import Schedule, default_shape, read_schedule_file
from skipdecode.tokenizer import Tokenizer

BACKENDS = ("onnxruntime", "tensorrt")


def resolve_export(path: str | Path, backend: str) -> Path:
    """An export folder; a ``--target both`` export holds one folder per target inside."""
    path = Path(path)
    if not (path / MANIFEST).is_file() and (path / backend / MANIFEST).is_file():
        return path / backend
    return path


def open_backend(path: str | Path, backend: str = "onnxruntime", device: str = "cpu",
                 providers: Sequence[str] | None = None, threads: int | None = None):
    """The backend object for an export (onnxruntime) or an engine folder (tensorrt)."""
    path = resolve_export(path, backend)
    if backend == "onnxruntime":
        from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

        if providers is None:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
            if device.startswith("cuda"):
                import onnxruntime as ort
                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    raise SkipDecodeError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return OnnxRuntimeBackend(path, providers=providers, threads=threads)
    if backend == "tensorrt":
        from skipdecode.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path)
    raise SkipDecodeError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


class Runtime:
    def __init__(self, backend, tokenizer: Tokenizer, own_schedule: Schedule | None = None,
                 facts: Mapping | None = None):
        self.backend = backend
        self.tokenizer = tokenizer
        self.own_schedule = own_schedule
        """The export's own schedule (its manifest's): the one its checkpoint was fine-tuned under, or
        the one `skipdecode tune` chose for it; None: full depth."""
        self.facts = dict(facts or {})
        """The checkpoint's training facts (the export's skipdecode.json less its schedule): a
        speedup-range model's window and decay, which speedups are solved in (``default_shape``)."""

    @classmethod
    def load(cls, path: str | Path, backend: str = "onnxruntime", device: str = "cpu",
             providers: Sequence[str] | None = None, threads: int | None = None) -> "Runtime":
        b = open_backend(path, backend, device, providers, threads)
        return cls(b, Tokenizer.from_dir(b.dir), b.manifest.schedule, read_schedule_file(b.dir)[1])

    @property
    def num_layers(self) -> int:
        return self.backend.num_layers

    def schedule(self, schedule: Schedule | None = None, speedup: float | None = None, window: int | None = None,
                 like: Schedule | None = None) -> Schedule:
        """An explicit schedule, one solved for ``speedup``, the export's own, or full depth.

        A solved schedule keeps the family (warm-up layers, drop order, prompt depth) of ``like``,
        by default the export's own schedule: rows of one batch must share their nesting, and the
        model runs as it was fine-tuned. ``window`` and the decay default to that schedule's, or to the
        range a full-depth model was trained over (``default_shape``)."""
        if schedule is not None and speedup is not None:
            raise SkipDecodeError("give a schedule or a speedup, not both")
        if schedule is not None:
            return schedule
        if speedup is not None:
            base = like or self.own_schedule
            family = (base or Schedule.full(self.num_layers)).family()
            shape = default_shape(base, self.facts, window)
            try:
                return Schedule.full(self.num_layers, **family) if speedup == 1 else Schedule.for_speedup(
                    self.num_layers, speedup, **shape, **family)
            except ValueError as e:
                raise SkipDecodeError(f"speedup {speedup:g}: {e}") from None
        return self.own_schedule or Schedule.full(self.num_layers)

    def engine(self, config: EngineConfig = EngineConfig()) -> Engine:
        """A continuous-batching engine over this runtime's backend, tokenizer and schedule."""
        return Engine(self.backend, self.tokenizer.eos_ids, self.tokenizer.pad_id, config, self.schedule(),
                      self.tokenizer)

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]] | str,
                 schedule: Schedule | Sequence[Schedule] | None = None,
                 speedup: float | None = None, max_new_tokens: int | Sequence[int] = 64, batch_size: int = 8,
                 sampling: SamplingConfig | None = None, stop: Sequence[str] = (), ignore_eos: bool = False,
                 progress=None, window: int | None = None, policy: str = "continuous") -> list[RowResult]:
        """Generate for text prompts (or token-id lists); rows in input order with text filled in.
        ``schedule`` and ``max_new_tokens`` may be one per prompt."""
        if isinstance(prompts, str):
            prompts = [prompts]
        texts = [p if isinstance(p, str) else None for p in prompts]
        ids = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        per_row = schedule is not None and not isinstance(schedule, Schedule)
        sched = list(schedule) if per_row else self.schedule(schedule, speedup, window)  # type: ignore[arg-type]
        news = None if isinstance(max_new_tokens, int) else list(max_new_tokens)
        cfg = GenerationConfig(max_new_tokens if news is None else max(news), sampling or SamplingConfig(),
                               tuple(stop), ignore_eos)
        rows = generate_ids(self.backend, ids, sched, cfg, self.tokenizer.eos_ids, self.tokenizer.pad_id,
                            batch_size, progress, self.tokenizer, policy, news)
        for text, row in zip(texts, rows):
            row.prompt = text
        return rows

    def timed(self, prompts: Sequence[str], schedule: Schedule | Sequence[Schedule] | None = None, *,
              warmup: bool = False, show_progress: bool = False, desc: str = "generate", **kw) -> GenerationRun:
        """``generate`` timed: the rows and the wall time of generation alone. ``warmup`` first runs
        one short untimed batch (sessions, bindings and kernels are made on first use)."""
        import sys
        import time

        from tqdm import tqdm

        if warmup:
            n = kw.get("batch_size", 8)
            first = schedule if schedule is None or isinstance(schedule, Schedule) else list(schedule)[:n]
            self.generate(prompts[:n], first, max_new_tokens=2, batch_size=n)
        with tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not show_progress, file=sys.stderr) as bar:
            t0 = time.perf_counter()
            rows = self.generate(prompts, schedule, progress=bar.update, **kw)
            wall = time.perf_counter() - t0
        return GenerationRun(rows, wall)

    def stream(self, prompts: Sequence[str] | str, schedule: Schedule | None = None, speedup: float | None = None,
               max_new_tokens: int = 64, sampling: SamplingConfig | None = None, stop: Sequence[str] = (),
               ignore_eos: bool = False, window: int | None = None) -> Iterator[TextEvent]:
        """Yield each prompt's text as tokens arrive (incremental detokenization; stop strings cut)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = [self.tokenizer.encode(p) for p in prompts]
        sched = self.schedule(schedule, speedup, window)
        engine = Engine(self.backend, self.tokenizer.eos_ids, self.tokenizer.pad_id,
                        EngineConfig(max(1, len(ids)), max(map(len, ids)) + max_new_tokens), sched, self.tokenizer)
        rid = {engine.add(Request(p, max_new_tokens, sched, sampling or SamplingConfig(), tuple(stop), ignore_eos)): i
               for i, p in enumerate(ids)}
        while engine.has_work:
            for event in engine.step():
                if event.text:
                    yield TextEvent(rid[event.request_id], event.token_id, event.text)


@dataclass
class TextEvent:
    """A streamed piece of text for one prompt (``row``: its index in the prompts)."""

    row: int
    token_id: int
    text: str
