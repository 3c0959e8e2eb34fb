"""`skipdecode calibrate`: quantize an fp32 export (int8 dynamic, int8 static calibrated on what
skip decoding feeds each layer, int4 weight-only) into a complete export folder."""

from __future__ import annotations

import sys
from pathlib import Path

from skipdecode.calibration.capture import CaptureConfig
from skipdecode.calibration.quantize import CALIBRATION_METHODS, METHODS, PRECISIONS, REDUCE_RANGE, QuantConfig
from skipdecode.cli import options
from skipdecode.cli.dataclass_args import add_fields, from_args
from skipdecode.data import FORMATS
from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import TARGETS


def add_arguments(p):
    p.add_argument("export", metavar="EXPORT_DIR", help="a float32 `skipdecode export` folder")
    p.add_argument("--out", required=True, help="the quantized export folder to write")
    p.add_argument("--data", help="task prompts from a training file (E2E CSV or JSONL; never the test set), or a "
                   "calibration folder captured before (index.json). Needed by int8-static; otherwise its "
                   "prompts only feed the agreement check")
    p.add_argument("--format", choices=FORMATS, help="--data format (default: from the extension)")
    p.add_argument("--calibration-schedule", choices=["deployment", "full"], default="deployment",
                   help="run the calibration prompts under the deployment schedule (default) or at full depth")
    p.add_argument("--shards", help="folder for the captured calibration data (default: OUT.calib; reused when it "
                   "holds the same capture)")
    p.add_argument("--check-prompts", type=int, default=8,
                   help="prompts (not used for calibration) of the teacher-forced agreement check against the fp32 "
                   "export, recorded in the manifest; 0 skips it (default 8)")
    p.add_argument("--check-tokens", type=int, default=16, help="tokens per check prompt (default 16)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    quant = p.add_argument_group("quantization (QuantConfig, calibration/quantize.py)")
    add_fields(quant, QuantConfig, flags={"smooth_alpha": "--smooth"}, metavars={"smooth_alpha": "ALPHA"},
               choices={"method": METHODS, "target": TARGETS, "head": PRECISIONS, "embed": PRECISIONS,
                        "calibration_method": CALIBRATION_METHODS, "reduce_range": REDUCE_RANGE})
    add_fields(p.add_argument_group("calibration data (CaptureConfig, calibration/capture.py)"), CaptureConfig)
    options.add_schedule_arguments(p)


def _random_prompts(vocab: int, n: int, seed: int) -> list[list[int]]:
    import numpy as np

    low = min(100, vocab // 4)
    return np.random.default_rng(seed).integers(low, vocab, size=(n, 16)).tolist()


def run(args) -> int:
    from skipdecode.calibration import capture as cap
    from skipdecode.calibration.quantize import check_inputs, quantize_export
    from skipdecode.runtime.manifest import load_manifest
    from skipdecode.schedule import Schedule, read_schedule_file
    from skipdecode.tokenizer import Tokenizer

    source, out = Path(args.export), Path(args.out)
    manifest = load_manifest(source)
    config = from_args(QuantConfig, args)
    if args.check_prompts < 0 or args.check_tokens < 1:
        raise SkipDecodeError("--check-prompts must be >= 0 and --check-tokens >= 1")
    data = Path(args.data).resolve() if args.data else None
    if data is not None and not data.exists():
        raise SkipDecodeError(f"--data {data}: no such file or folder")
    check_inputs(manifest, config, source, data is not None)
    if out.exists() and not args.overwrite:
        raise SkipDecodeError(f"{out}: already exists (pass --overwrite to replace it)")
    capture_cfg = from_args(CaptureConfig, args)
    L = manifest.num_layers
    deployment = options.build_schedule(args, L, manifest.deployed_schedule(), read_schedule_file(source)[1])
    schedule = deployment if args.calibration_schedule == "deployment" else Schedule.full(L)
    tok = Tokenizer.from_dir(source)

    shards, check = None, []
    if data is not None and data.is_dir():
        shards = cap.ShardSet(data)
        if not shards.schedule == schedule:
            print(f"note: {data} was captured under {shards.schedule.describe()} (its index rules)", file=sys.stderr)
    elif data is not None:
        prompts = cap.calibration_prompts(data, args.samples + args.check_prompts, args.seed, args.format)
        calib, check = prompts[:args.samples], [tok.encode(p) for p in prompts[args.samples:]]
        if config.needs_data:
            folder = Path(args.shards) if args.shards else out.with_name(out.name + ".calib")
            shards = cap.reusable(folder, source, schedule, capture_cfg, str(data))
            if shards is not None:
                print(f"reusing the calibration data in {folder}", file=sys.stderr)
            else:
                print(f"capturing calibration data: {len(calib)} prompts under {schedule.describe()} -> {folder}",
                      file=sys.stderr)
                cap.capture(source, calib, schedule, folder, capture_cfg, args.calibration_schedule, str(data),
                            args.threads)
                shards = cap.ShardSet(folder)
    if not check and args.check_prompts:
        check = _random_prompts(manifest.vocab_size, args.check_prompts, args.seed)
    m = quantize_export(source, out, config, shards, args.overwrite, check, args.check_tokens, args.threads,
                        data=str(data) if data else None)
    q = m.quantization
    size = sum(e.bytes for _, e in m.named_graphs(decode=True))
    line = (f"{args.method}: {q['source']['bytes'] / 1e6:.1f} MB -> {size / 1e6:.1f} MB of graphs "
            f"in {q['seconds']:.1f} s")
    if q.get("check"):
        c = q["check"]
        line += (f" | vs fp32, teacher-forced on {c['prompts']} prompts x {c['new_tokens']} tokens: top-1 agreement "
                 f"{100 * c['top1_agreement']:.1f}%, mean KL {c['mean_kl']:.4f} nats, "
                 f"max |logit diff| {c['max_abs_logit_diff']:.3f}")
    print(f"{line} | wrote {out}", file=sys.stderr)
    return 0
