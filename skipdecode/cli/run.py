"""`skipdecode run`: generate through an export on ONNX Runtime or TensorRT (no torch needed).

Every prompt joins one continuous batch of at most --max-batch rows; an --input line may carry
its own "speedup" and "max_new_tokens", so requests at different speed/quality points share it."""

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

    rows_in = options.read_rows(args)
    config = options.generation_config(args)
    rt = Runtime.load(args.export, args.backend, args.device, threads=args.threads)
    default = options.build_schedule(args, rt.num_layers, rt.own_schedule, rt.facts)
    schedules = options.row_schedules(rows_in, default, lambda s: rt.schedule(
        speedup=s, window=args.window, like=default))
    news = [int(r.get("max_new_tokens") or config.max_new_tokens) for r in rows_in]
    run = rt.timed([r["prompt"] for r in rows_in], schedules, show_progress=args.input is not None,
                   max_new_tokens=news, batch_size=args.batch_size, sampling=config.sampling, stop=config.stop)
    options.emit(run.rows, args.output)
    print(options.summary(run, schedules), file=sys.stderr)
    return 0
