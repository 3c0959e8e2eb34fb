"""`skipdecode run`: serve an export through ONNX Runtime or TensorRT (no torch needed)."""

from __future__ import annotations

import sys

from skipdecode.cli import options
from skipdecode.runtime.api import BACKENDS


def add_arguments(p):
    p.add_argument("--export", required=True, help="export folder (onnxruntime) or engine folder (tensorrt)")
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    p.add_argument("--device", default="cpu", help="cpu or cuda (onnxruntime); tensorrt always runs on cuda")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    options.add_generation_arguments(p)


def run(args) -> int:
    from skipdecode.runtime.api import Runtime

    prompts = options.read_prompts(args)
    config = options.generation_config(args)
    rt = Runtime.load(args.export, args.backend, args.device, threads=args.threads)
    schedule = options.build_schedule(args, rt.num_layers, rt.trained_schedule)
    rows, elapsed = options.generate_texts(rt.backend, rt.tokenizer, prompts, schedule, config, args.batch_size,
                                           show_progress=args.input is not None)
    options.emit(rows, args.output)
    print(options.summary(rows, elapsed, schedule), file=sys.stderr)
    return 0
