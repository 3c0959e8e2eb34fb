"""`skipdecode eval`: generate for a test set through a backend, score against the references,
and write report.json, outputs.jsonl and report.md."""

from __future__ import annotations

import shlex
import sys
import time

from skipdecode.cli import options
from skipdecode.data import FORMATS
from skipdecode.errors import SkipDecodeError


def add_arguments(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="smollm2-135m, an HF checkpoint folder or a .gguf file (PyTorch reference)")
    src.add_argument("--export", help="a `skipdecode export` folder (ONNX Runtime or TensorRT)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="E2E CSV (mr, ref) or JSONL file")
    data.add_argument("--heldout", metavar="RUN", help="the prompts a `skipdecode train` run held out "
                      "(RUN/split.json): a dev slice for choosing settings without the test set")
    p.add_argument("--format", choices=FORMATS, help="default: from the extension (.csv e2e, .jsonl)")
    p.add_argument("--prompt-field", default="prompt", help="JSONL prompt field (default prompt)")
    p.add_argument("--target-field", default="target",
                   help="JSONL reference field: a string or a list of strings (default target)")
    p.add_argument("--backend", choices=options.BACKEND_CHOICES,
                   help="default: torch with --model, onnxruntime with --export")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="PyTorch reference dtype")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, help="score only the first N distinct inputs")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--method", help="label in the report and in `compare` plots "
                   "(default: full, static or skipdecode from the schedule)")
    p.add_argument("--out", required=True, help="folder for report.json, outputs.jsonl and report.md")
    options.add_schedule_arguments(p)


def _open_torch(args):
    import torch

    from skipdecode.models import load_model
    from skipdecode.models.backend import TorchBackend

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SkipDecodeError("--device cuda: no CUDA device is available")
    loaded = load_model(args.model, args.device, getattr(torch, args.dtype))
    return TorchBackend(loaded.model), loaded.tokenizer, loaded.schedule, loaded.facts


def _open_export(args):
    """The runtime backends live in runtime/ (another module's work): imported only when asked."""
    from skipdecode.evaluation.backends import open_export

    return open_export(args.export, args.backend, args.device)


def _command(args) -> str:
    parts = ["skipdecode", "eval"]
    skip = set() if args.format == "jsonl" or str(args.data).endswith((".jsonl", ".json")) else {
        "prompt_field", "target_field"}
    if not args.model:
        skip.add("dtype")
    for flag in ("model", "export", "data", "heldout", "format", "prompt_field", "target_field", "backend", "device",
                 "dtype", "batch_size", "limit", "max_new_tokens", "method", "out", "speedup", "max_layers",
                 "min_layers", "window", "warmup_layers", "decay", "drop_order", "prompt_layers"):
        value = None if flag in skip else getattr(args, flag, None)
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)  # --drop-order's list
            parts += [f"--{flag.replace('_', '-')}", text]
    for s in args.stop:
        parts += ["--stop", s]
    return shlex.join(parts)


def run(args) -> int:
    from skipdecode.data import group_examples, infer_format, load_examples, load_heldout
    from skipdecode.evaluation.report import build_report, method_of, output_records, write_report
    from skipdecode.evaluation.runner import evaluate
    from skipdecode.runtime.generate import GenerationConfig

    t0 = time.perf_counter()
    args.backend = args.backend or ("torch" if args.model else "onnxruntime")
    if args.model and args.backend != "torch":
        raise SkipDecodeError(f"--backend {args.backend} runs an export: give --export DIR "
                              f"(made by `skipdecode export`), not --model")
    if args.export and args.backend == "torch":
        raise SkipDecodeError("--backend torch runs a checkpoint: give --model, not --export")
    if args.batch_size < 1:
        raise SkipDecodeError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.heldout:
        examples = load_heldout(args.heldout, args.limit)
    else:
        examples = group_examples(load_examples(args.data, args.format, args.prompt_field, args.target_field),
                                  args.limit)
    config = GenerationConfig(args.max_new_tokens, stop=tuple(args.stop))
    backend, tokenizer, trained, training = _open_torch(args) if args.model else _open_export(args)
    schedule = options.build_schedule(args, backend.num_layers, trained, training)
    print(f"eval: {len(examples)} inputs, {schedule.describe()}, backend {args.backend}", file=sys.stderr)
    result = evaluate(backend, tokenizer, examples, schedule, config, args.batch_size)
    report = build_report(
        result, method=args.method or method_of(schedule), backend=args.backend,
        data=str(args.data) if args.data else f"held out by {args.heldout}",
        data_format=args.format or (infer_format(args.data) if args.data else "heldout"),
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, model=args.model, export=args.export,
        limit=args.limit, stop=tuple(args.stop), training=training, device=args.device,
        total_wall_s=time.perf_counter() - t0, command=_command(args))
    out = write_report(args.out, report, output_records(result))
    print(f"{report['method']}: BLEU {report['bleu']:.2f}, ROUGE-L {report['rouge_l']:.2f} on "
          f"{report['num_inputs']} inputs | mean layers {report['mean_layers']:.2f}/{report['num_layers']} "
          f"(realised layer speedup {report['layer_speedup']:.2f}x, target {report['target_speedup']:.2f}x) | "
          f"{report['tokens']} tokens in {report['wall_s']:.1f} s = {report['tokens_per_s']:.1f} tokens/s "
          f"({report['decode_tokens_per_s']:.1f} decoding, after {report['prefill_s']:.1f} s of prefill) | "
          f"wrote {out}/report.json, outputs.jsonl, report.md")
    return 0
