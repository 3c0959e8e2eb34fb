"""An evaluation's files: ``report.json`` (the numbers), ``outputs.jsonl`` (every output with its
references) and ``report.md`` (the same, readable). Each file is written atomically."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.evaluation.runner import EvalResult
from skipdecode.io import atomic_write_text, read_json, write_jsonl
from skipdecode.versions import package_versions

REPORT_VERSION = 2
"""2: decode_tokens_per_s and prefill_s (decode-only speed)."""
REQUIRED = ("method", "backend", "bleu", "rouge_l", "layer_speedup", "target_speedup", "tokens_per_s")
METHODS = ("full", "skipdecode", "static")


def method_of(schedule) -> str:
    """The default method label: full depth, static layer dropping, or a decaying SkipDecode schedule."""
    if schedule.is_full:
        return "full"
    return "static" if schedule.min_layers == schedule.max_layers else "skipdecode"


def machine() -> dict:
    from skipdecode.cpu import cpu_model

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


def _versions() -> dict:
    return package_versions(("skipdecode", "sacrebleu", "rouge-score", "onnxruntime", "torch", "tensorrt"))


def build_report(result: EvalResult, *, method: str, backend: str, data: str, data_format: str,
                 batch_size: int, max_new_tokens: int, model: str | None = None, export: str | None = None,
                 limit: int | None = None, stop: tuple[str, ...] = (), training: dict | None = None,
                 total_wall_s: float | None = None, device: str = "cpu", command: str | None = None) -> dict:
    s = result.schedule
    return {
        "report_version": REPORT_VERSION,
        "method": method,
        "model": model,
        "export": export,
        "backend": backend,
        "device": device,
        "data": data,
        "data_format": data_format,
        "limit": limit,
        "num_inputs": len(result.examples),
        "num_references": sum(len(e.references) for e in result.examples),
        "num_layers": s.num_layers,
        "schedule": s.to_dict(),
        "schedule_description": s.describe(),
        "target_speedup": round(s.speedup, 4),
        "mean_layers": round(result.mean_layers, 4),
        "layer_speedup": round(result.layer_speedup, 4),
        **result.scores.summary(),
        "tokens": result.tokens,
        "mean_output_tokens": round(result.tokens / max(len(result.rows), 1), 2),
        "finish_reasons": result.finish_reasons(),
        "tokens_per_s": round(result.tokens_per_s, 2),
        "decode_tokens_per_s": round(result.decode_tokens_per_s, 2),
        "wall_s": round(result.wall_s, 3),
        "prefill_s": round(result.prefill_s, 3),
        "total_wall_s": None if total_wall_s is None else round(total_wall_s, 3),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "stop": list(stop),
        "decoding": "greedy",
        "training": training or {},
        "machine": machine(),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
    }


def output_records(result: EvalResult) -> list[dict]:
    return [{"index": i, "input": e.input, "prompt": e.prompt, "output": r.text, "references": e.references,
             "rouge_l": round(rl, 2), "tokens": r.tokens, "mean_layers": round(r.mean_layers, 3),
             "finish_reason": r.finish_reason, "token_ids": r.token_ids}
            for i, (e, r, rl) in enumerate(zip(result.examples, result.rows, result.scores.rouge_l_per_example))]


def _md_escape(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def render_markdown(report: dict, outputs: list[dict], examples: int = 8) -> str:
    r = report
    source = f"model `{r['model']}`" if r.get("model") else f"export `{r['export']}`"
    lines = [
        f"# Evaluation: {r['method']} on {Path(r['data']).name}",
        "",
        f"{source}, backend {r['backend']} ({r['device']}), {r['schedule_description']}.",
        f"{r['num_inputs']} inputs ({r['num_references']} references), greedy, batch {r['batch_size']}, "
        f"at most {r['max_new_tokens']} new tokens.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| BLEU | {r['bleu']:.2f} |",
        f"| ROUGE-L | {r['rouge_l']:.2f} |",
        f"| METEOR | {r['meteor'] if r.get('meteor') is not None else 'n/a'} |",
        f"| target speedup | {r['target_speedup']:.2f}x |",
        f"| realised mean layers | {r['mean_layers']:.2f} of {r['num_layers']} |",
        f"| realised layer speedup | {r['layer_speedup']:.2f}x |",
        f"| generated tokens | {r['tokens']} ({r['mean_output_tokens']:.1f} per output) |",
        f"| tokens/s | {r['tokens_per_s']:.1f} |",
        *([f"| decode tokens/s (prefill excluded) | {r['decode_tokens_per_s']:.1f} |"]
          if r.get("decode_tokens_per_s") is not None else []),
        f"| generation wall time | {r['wall_s']:.1f} s"
        + (f" ({r['prefill_s']:.1f} s prefill)" if r.get("prefill_s") is not None else "") + " |",
        "",
        f"BLEU signature: `{r['bleu_signature']}`. METEOR: {r.get('meteor_note', '')}.",
        f"Finish reasons: {', '.join(f'{k} {v}' for k, v in sorted(r['finish_reasons'].items()))}.",
        f"Machine: {r['machine']['platform']}, {r['machine']['cpu_count']} CPUs.",
    ]
    if r.get("command"):
        lines += ["", "```", r["command"], "```"]
    if outputs:
        lines += ["", f"## First {min(examples, len(outputs))} outputs", "",
                  "| input | output | ROUGE-L | first reference |", "| --- | --- | --- | --- |"]
        for o in outputs[:examples]:
            lines.append(f"| {_md_escape(o['input'])} | {_md_escape(o['output'])} | {o['rouge_l']:.1f} | "
                         f"{_md_escape(o['references'][0])} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: dict, outputs: list[dict]) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SkipDecodeError(f"--out {out}: exists and is not a folder")
    write_jsonl(out / "outputs.jsonl", outputs)
    atomic_write_text(out / "report.md", render_markdown(report, outputs))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return out


def load_report(path: str | Path) -> dict:
    """A ``report.json`` file, or a folder that holds one."""
    file, report = read_json(path, "report.json", "{path}: no report.json")
    if not isinstance(report, dict):
        raise SkipDecodeError(f"{file}: not an evaluation report (expected a JSON object)")
    missing = [k for k in REQUIRED if k not in report]
    if missing:
        raise SkipDecodeError(f"{file}: not an evaluation report (missing {', '.join(missing)})")
    report["_path"] = str(file)
    return report
