"""ONNX Runtime GenAI's monolithic graph as a benchmark baseline (`skipdecode bench --compare ort-genai`).

Its model builder turns an HF folder into one graph with the KV cache as inputs/outputs; that is
the best full-depth ONNX deployment to beat. The builder runs as a subprocess (it imports torch
and transformers; this module does not) and its output is cached under ``build/``, rebuilt when
the checkpoint's files, the precision or the onnxruntime-genai version change. The builder
supports the Llama family (Llama, Mistral, Qwen2, SmolLM2) but not OPT.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from skipdecode.errors import SkipDecodeError
from skipdecode.io import atomic_dir
from skipdecode.runtime.bench import RunTiming
from skipdecode.schedule import Schedule

STAMP = "skipdecode-build.json"


def _version() -> str:
    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        raise SkipDecodeError("--compare ort-genai needs onnxruntime-genai: pip install 'skipdecode[bench]'") from None


def _stamp(hf_dir: Path, precision: str, execution: str) -> dict:
    files = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(hf_dir.iterdir())
             if f.name == "config.json" or f.suffix == ".safetensors"}
    return {"source": str(hf_dir.resolve()), "files": files, "precision": precision, "execution": execution,
            "onnxruntime_genai": _version()}


def build_model(hf_dir: str | Path, build_root: str | Path = "build", precision: str = "fp32",
                execution: str = "cpu") -> Path:
    """The builder's output folder for ``hf_dir``, built on first use and cached."""
    hf_dir = Path(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    arch = (config.get("architectures") or [config.get("model_type", "?")])[0]
    if config.get("model_type") == "opt" or arch.startswith("OPT"):
        raise SkipDecodeError(f"--compare ort-genai: ONNX Runtime GenAI's model builder does not support OPT "
                              f"({hf_dir} is {arch}); compare with a Llama-family checkpoint or drop ort-genai")
    stamp = _stamp(hf_dir, precision, execution)
    key = hashlib.sha256(stamp["source"].encode()).hexdigest()[:8]
    out = Path(build_root) / f"ort-genai-{precision}" / f"{hf_dir.name}-{key}"
    if (out / "genai_config.json").is_file() and (out / STAMP).is_file():
        if json.loads((out / STAMP).read_text()) == stamp:
            return out
    log = out.with_name(out.name + ".log")
    print(f"building the ONNX Runtime GenAI model ({precision}, {execution}) in {out}, log in {log}",
          file=sys.stderr)
    with atomic_dir(out) as tmp:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(tmp),
               "-p", precision, "-e", execution, "-c", str(tmp / ".cache")]
        with log.open("w") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
        if done.returncode != 0 or not (tmp / "genai_config.json").is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise SkipDecodeError(f"ONNX Runtime GenAI's model builder failed (exit {done.returncode}): "
                                  f"{tail[0][:300]} (full log: {log})")
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1))
    return out


class OrtGenAIRunner:
    """Greedy generation of exactly ``new_tokens`` (min_length = max_length) with og.Generator."""

    name = "ort-genai"
    skips = False

    def __init__(self, model_dir: str | Path, threads: int | None = None):
        _version()
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(model_dir))
        if threads:
            options = {"intra_op_num_threads": threads}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self.note = (f"onnxruntime-genai {_version()} model builder graph, "
                     f"{threads or 'all'} intra-op threads")
        self.last_tokens: list[list[int]] = []

    def run(self, prompts: np.ndarray, schedule: Schedule, new_tokens: int) -> RunTiming:
        if not schedule.is_full:
            raise ValueError("ONNX Runtime GenAI runs full depth only")
        B, P = prompts.shape
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(batch_size=B, max_length=P + new_tokens, min_length=P + new_tokens,
                                  do_sample=False)
        try:
            generator = self.og.Generator(self.model, params)
            t0 = time.perf_counter()
            generator.append_tokens(prompts.astype(np.int32))  # the prompt forward
            generator.generate_next_token()  # picks token 0 from the prompt's logits
            first = time.perf_counter()
            while not generator.is_done():
                generator.generate_next_token()  # one forward of the previous token, then a pick
            end = time.perf_counter()
        except RuntimeError as e:
            raise SkipDecodeError(f"ONNX Runtime GenAI failed: {str(e).splitlines()[0]}") from None
        self.last_tokens = [generator.get_sequence(i)[P:].tolist() for i in range(B)]
        """Generated ids of the last run, per row (EOS is masked until new_tokens: min_length)."""
        return RunTiming(first - t0, end - first, sum(len(t) for t in self.last_tokens))
