"""`Runtime`: the deployable API over an export (ONNX Runtime) or engine folder (TensorRT).

    rt = Runtime.load("build/smollm2", backend="onnxruntime")
    rows = rt.generate(["name[The Eagle], eatType[pub]"], speedup=3, max_new_tokens=32)
    for event in rt.stream("Hello", speedup=2): print(event.text, end="")

Imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.generate import GenerationConfig, RowResult, StepEvent, generate_ids, stream_batch
from skipdecode.runtime.sampling import SamplingConfig
from skipdecode.schedule import Schedule
from skipdecode.tokenizer import Tokenizer

BACKENDS = ("onnxruntime", "tensorrt")


def resolve_export(path: str | Path, backend: str) -> Path:
    """An export folder; a ``--target both`` export holds one folder per target inside."""
    path = Path(path)
    if not (path / "manifest.json").is_file() and (path / backend / "manifest.json").is_file():
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


@dataclass
class TextEvent:
    """A streamed piece of text for one row."""

    row: int
    token_id: int
    text: str


class Runtime:
    def __init__(self, backend, tokenizer: Tokenizer, trained_schedule: Schedule | None = None):
        self.backend = backend
        self.tokenizer = tokenizer
        self.trained_schedule = trained_schedule

    @classmethod
    def load(cls, path: str | Path, backend: str = "onnxruntime", device: str = "cpu",
             providers: Sequence[str] | None = None, threads: int | None = None) -> "Runtime":
        b = open_backend(path, backend, device, providers, threads)
        return cls(b, Tokenizer.from_dir(b.dir), b.manifest.schedule)

    @property
    def num_layers(self) -> int:
        return self.backend.num_layers

    def schedule(self, schedule: Schedule | None = None, speedup: float | None = None, window: int = 32,
                 warmup_layers: int = 1) -> Schedule:
        """An explicit schedule, one solved for ``speedup``, the export's own, or full depth."""
        if schedule is not None and speedup is not None:
            raise SkipDecodeError("give a schedule or a speedup, not both")
        if schedule is not None:
            return schedule
        if speedup is not None:
            return Schedule.full(self.num_layers) if speedup == 1 else Schedule.for_speedup(
                self.num_layers, speedup, window, warmup_layers)
        return self.trained_schedule or Schedule.full(self.num_layers)

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]] | str, schedule: Schedule | None = None,
                 speedup: float | None = None, max_new_tokens: int = 64, batch_size: int = 8,
                 sampling: SamplingConfig | None = None, stop: Sequence[str] = (), ignore_eos: bool = False,
                 progress=None, window: int = 32) -> list[RowResult]:
        """Generate for text prompts (or token-id lists); rows in input order with text filled in."""
        if isinstance(prompts, str):
            prompts = [prompts]
        texts = [p if isinstance(p, str) else None for p in prompts]
        ids = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        cfg = GenerationConfig(max_new_tokens, sampling or SamplingConfig(), tuple(stop), ignore_eos)
        stop_check = self._stop_check(cfg.stop) if cfg.stop else None
        rows = generate_ids(self.backend, ids, self.schedule(schedule, speedup, window), cfg, self.tokenizer.eos_ids,
                            self.tokenizer.pad_id, batch_size, stop_check, progress)
        for text, row in zip(texts, rows):
            row.prompt = text
            row.text = cut_at_stop(self.tokenizer.decode(row.token_ids), cfg.stop)
        return rows

    def _stop_check(self, stop: Sequence[str]):
        return lambda i, toks: any(s in self.tokenizer.decode(toks) for s in stop)

    def stream(self, prompts: Sequence[str] | str, schedule: Schedule | None = None, speedup: float | None = None,
               max_new_tokens: int = 64, sampling: SamplingConfig | None = None,
               ignore_eos: bool = False, window: int = 32) -> Iterator[TextEvent]:
        """Yield each row's text as tokens arrive (one batch; incremental detokenization)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = [self.tokenizer.encode(p) for p in prompts]
        cfg = GenerationConfig(max_new_tokens, sampling or SamplingConfig(), (), ignore_eos)
        so_far: list[list[int]] = [[] for _ in prompts]
        shown = [""] * len(prompts)
        for event in stream_batch(self.backend, ids, self.schedule(schedule, speedup, window), cfg, self.tokenizer.eos_ids,
                                  self.tokenizer.pad_id):
            if not isinstance(event, StepEvent):
                return
            for row, tok in zip(event.rows, event.token_ids):
                so_far[row].append(tok)
                text = self.tokenizer.decode(so_far[row])
                if not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
                    yield TextEvent(row, tok, text[len(shown[row]):])
                    shown[row] = text


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    for s in stop:
        if s in text:
            text = text[: text.index(s)]
    return text
