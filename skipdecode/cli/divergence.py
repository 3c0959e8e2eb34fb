"""`skipdecode divergence`: KL divergence of quantized exports from their fp32 source, per prompt,
with paired intervals between them (calibration/divergence.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from skipdecode.cli import options
from skipdecode.data import FORMATS
from skipdecode.errors import SkipDecodeError


def add_arguments(p):
    p.add_argument("reference", metavar="FP32_DIR", help="the fp32 export the others were quantized from")
    p.add_argument("exports", nargs="+", metavar="EXPORT_DIR", help="exports to score against it (quantized ones)")
    p.add_argument("--data", required=True, help="prompts: an E2E CSV or JSONL file (distinct prompts, file order)")
    p.add_argument("--format", choices=FORMATS, help="--data format (default: from the extension)")
    p.add_argument("--limit", type=int, help="only the first N distinct prompts")
    p.add_argument("--new-tokens", type=int, default=32,
                   help="steps per prompt at most; each stops after the fp32 export's end-of-sequence (default 32)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="prompts per lockstep batch (default 8); per-call (dynamic) activation scales span the "
                   "batch, so a dynamic export's scores depend on it")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--json", help="write the per-prompt scores here, after each export; a re-run with the same "
                   "reference, prompts and schedule reuses the exports it already holds")
    options.add_schedule_arguments(p)


def _settings(args, schedule, inputs) -> dict:
    return {"reference": str(Path(args.reference).resolve()), "data": str(Path(args.data).resolve()),
            "schedule": schedule.to_dict(), "new_tokens": args.new_tokens, "batch_size": args.batch_size,
            "inputs": inputs}


def _previous(path: str | None, settings: dict) -> dict:
    """Exports already scored in ``path`` under the same settings (else nothing)."""
    from skipdecode.io import read_json

    if not path or not Path(path).is_file():
        return {}
    _, old = read_json(path, "", "{file}: no such file")
    same = isinstance(old, dict) and all(old.get(k) == v for k, v in settings.items())
    if not same:
        print(f"divergence: {path} holds other settings; scoring every export again", file=sys.stderr)
    return old.get("exports", {}) if same else {}


def run(args) -> int:
    from tqdm import tqdm

    from skipdecode.calibration.divergence import prompt_divergence, summary
    from skipdecode.data import group_examples, load_examples
    from skipdecode.io import atomic_write_text
    from skipdecode.schedule import read_schedule_file
    from skipdecode.runtime.manifest import MANIFEST, load_manifest, sha256_file
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from skipdecode.tokenizer import Tokenizer

    if args.new_tokens < 1 or args.batch_size < 1:
        raise SkipDecodeError("--new-tokens and --batch-size must be >= 1")
    ref_dir = Path(args.reference)
    ref_m = load_manifest(ref_dir)
    ref_hash = sha256_file(ref_dir / MANIFEST)
    for e in args.exports:
        m = load_manifest(e)
        if m.num_layers != ref_m.num_layers or m.vocab_size != ref_m.vocab_size:
            raise SkipDecodeError(f"{e}: {m.num_layers} layers / vocab {m.vocab_size}, the reference has "
                                  f"{ref_m.num_layers} / {ref_m.vocab_size}")
        src = (m.quantization or {}).get("source", {}).get("manifest_sha256")
        if src and src != ref_hash:
            print(f"divergence: warning: {e} was quantized from another export than {ref_dir}", file=sys.stderr)
    schedule = options.build_schedule(args, ref_m.num_layers, ref_m.deployed_schedule(), read_schedule_file(ref_dir)[1])
    examples = group_examples(load_examples(args.data, args.format), args.limit)
    tok = Tokenizer.from_dir(ref_dir)
    ids = [tok.encode(e.prompt) for e in examples]
    inputs = [e.input for e in examples]
    settings = _settings(args, schedule, inputs)
    done = _previous(args.json, settings)
    print(f"divergence from {ref_dir} on {len(ids)} prompts x <= {args.new_tokens} tokens under "
          f"{schedule.describe()}", file=sys.stderr)
    ref = OnnxRuntimeBackend(ref_dir, threads=args.threads)
    scores = {}
    for e in args.exports:
        key = str(Path(e).resolve())
        if key in done:
            scores[key] = done[key]
            print(f"divergence: {e}: reusing the scores in {args.json}", file=sys.stderr)
            continue
        other = OnnxRuntimeBackend(e, threads=args.threads)
        with tqdm(total=len(ids), desc=Path(e).name, unit="prompt", file=sys.stderr, leave=False) as bar:
            rows = prompt_divergence(ref, other, ids, schedule, args.new_tokens, tok.eos_ids, args.batch_size,
                                     bar.update)
        scores[key] = {"summary": summary(rows), "rows": rows}
        if args.json:
            atomic_write_text(args.json, json.dumps({**settings, "exports": {**done, **scores}}, indent=1) + "\n")
    _report(args.exports, scores, inputs, args.new_tokens)
    return 0


def _report(exports: list[str], scores: dict, inputs: list[str], new_tokens: int) -> None:
    """The summary table, KL by 8-step span, and each export against the first (paired)."""
    import numpy as np

    from skipdecode.calibration.divergence import paired

    print("| export | prompts | tokens | mean KL (nats) | top-1 agreement |\n|---|---|---|---|---|")
    for e in exports:
        s = scores[str(Path(e).resolve())]["summary"]
        print(f"| {e} | {s['prompts']} | {s['tokens']} | {s['mean_kl']:.5f} | {100 * s['top1_agreement']:.2f}% |")
    spans = [(a, min(a + 8, new_tokens)) for a in range(0, new_tokens, 8)]
    print("\n| export | " + " | ".join(f"KL, steps {a}-{b - 1}" for a, b in spans) + " |\n|---|"
          + "---|" * len(spans))
    for e in exports:
        k = scores[str(Path(e).resolve())]["summary"].get("kl_by_step", [])
        print(f"| {e} | " + " | ".join(f"{np.mean(k[a:b]):.5f}" if k[a:b] else "-" for a, b in spans) + " |")
    print("(step 0: the prefill's prediction, at full depth; step t: decode step t - 1 of the schedule)\n")
    first = scores[str(Path(exports[0]).resolve())]
    for e in exports[1:]:
        s = scores[str(Path(e).resolve())]
        d, lo, hi = paired(s["rows"], first["rows"], inputs)
        ratio = s["summary"]["mean_kl"] / max(first["summary"]["mean_kl"], 1e-12)
        print(f"KL {e} minus {exports[0]}: {d:+.5f} ({ratio:.2f}x), 95% interval [{lo:+.5f}, {hi:+.5f}] "
              f"over {len(inputs)} prompts (paired bootstrap)")
        d, lo, hi = (100 * v for v in paired(s["rows"], first["rows"], inputs, "top1"))
        print(f"top-1 agreement {e} minus {exports[0]}: {d:+.2f} points, 95% interval [{lo:+.2f}, {hi:+.2f}]")
