"""`skipdecode export`: per-layer ONNX graphs + manifest, validated against PyTorch."""

from __future__ import annotations

import json
import sys

from skipdecode.export.contract import TARGETS


def add_arguments(p):
    p.add_argument("--model", help="smollm2-135m, an HF checkpoint folder or a .gguf file")
    p.add_argument("--out", help="output folder (written atomically; refused if it exists)")
    p.add_argument("--target", default="onnxruntime", choices=[*TARGETS, "both"],
                   help="onnxruntime: contrib ops, KV updated in place; tensorrt: standard ONNX ops only; "
                        "both: DIR/onnxruntime and DIR/tensorrt")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--max-batch", type=int, default=32, help="largest batch the runtime may use (default 32)")
    p.add_argument("--max-seq", type=int, default=None,
                   help="T_max, KV buffer length (default min(2048, the model's positions))")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (or --save-outputs) folder")
    p.add_argument("--no-validate", action="store_true", help="skip the validation (not recommended)")
    p.add_argument("--verify-only", metavar="DIR", help="validate an existing export instead of exporting")
    p.add_argument("--report", help="write the validation report (JSON) here")
    p.add_argument("--save-outputs", metavar="DIR",
                   help="also save every graph's validation inputs and ONNX Runtime outputs in polygraphy's JSON "
                        "format, with DIR/compare.sh to check TensorRT against them (export/README.md)")
    p.add_argument("--save-layers", type=_layer_list, metavar="I,J,...",
                   help="with --save-outputs: only these layers (default all; the tensorrt target's static KV "
                        "buffers make ~25 MB per SmolLM2 layer at T_max 2048)")


def _layer_list(text: str) -> tuple[int, ...]:
    import argparse

    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected layer indices like 0,15,29") from None


def _summary(folder, manifest, report) -> str:
    m, g = manifest, manifest.graphs
    lines = [f"{folder}: {m.family} {m.num_layers} layers, target {m.target} ({m.layer_kind} layers), {m.dtype}, "
             f"T_max {m.max_seq}"]
    total = sum(e.bytes for _, e in m.named_graphs())
    lines.append(f"  files: {total / 1e6:.1f} MB total; embed {g.embed.bytes / 1e6:.1f} MB, "
                 f"layer {g.layers[0].bytes / 1e6:.1f} MB each, lm_head {g.lm_head.bytes / 1e6:.1f} MB")
    if report:
        for name, r in report["graphs"].items():
            if "hidden" in r:
                lines.append(f"  {name}: hidden abs {r['hidden']['max_abs']:.2e} rel {r['hidden']['max_rel']:.2e}; "
                             f"kv abs {r['kv']['max_abs']:.2e} rel {r['kv']['max_rel']:.2e}")
            else:
                lines.append(f"  {name}: abs {r['max_abs']:.2e} rel {r['max_rel']:.2e}")
        e = report["end_to_end"]
        lines.append(f"  end to end ({e['schedule']}): logits abs {e['max_abs']:.2e} rel {e['max_rel']:.2e}, "
                     f"{e['greedy_steps_agreeing']}/{e['steps']} greedy steps agree")
        for name, o in report["optimization"].items():
            lines.append(f"  ops {name}: {o['file_ops']} in the file -> {o['ort_optimized_ops']} after ORT's optimiser")
        if "reference_outputs" in report:
            r = report["reference_outputs"]
            lines.append(f"  polygraphy inputs/outputs of {r['graphs']} graphs ({r['bytes'] / 1e6:.1f} MB) "
                         f"in {r['folder']}; compare TensorRT with: bash {r['folder']}/compare.sh {folder}")
    return "\n".join(lines)


def run(args) -> int:
    from skipdecode.errors import SkipDecodeError

    if args.verify_only:
        from skipdecode.export.validate import verify_export
        from skipdecode.runtime.manifest import load_manifest

        model = None
        if args.model:
            from skipdecode.models import load_model
            model = load_model(args.model).model
        from skipdecode.export.exporter import outputs_dir

        with outputs_dir(args.save_outputs, args.overwrite) as save:
            if args.save_layers is not None and save is None:
                raise SkipDecodeError("--save-layers needs --save-outputs DIR")
            report = verify_export(args.verify_only, model, save_outputs=save, save_layers=args.save_layers)
        if args.save_outputs:
            report["reference_outputs"]["folder"] = args.save_outputs
        print(_summary(args.verify_only, load_manifest(args.verify_only), report))
        if args.report:
            from skipdecode.io import atomic_write_text
            atomic_write_text(args.report, json.dumps(report, indent=2))
        return 0
    if not args.model or not args.out:
        raise SkipDecodeError("--model and --out are required (or --verify-only DIR)")
    import time

    from skipdecode.export.exporter import ExportConfig, export_model

    cfg = ExportConfig(args.target, args.dtype, args.max_batch, args.max_seq, args.opset,
                       overwrite=args.overwrite, validate=not args.no_validate, save_outputs=args.save_outputs,
                       save_layers=args.save_layers)
    t0 = time.perf_counter()
    results = export_model(args.model, args.out, cfg)
    for target, r in results.items():
        print(_summary(r["folder"], r["manifest"], r["report"]))
        if args.report:
            from skipdecode.io import atomic_write_text
            path = args.report if len(results) == 1 else f"{args.report}.{target}.json"
            atomic_write_text(path, json.dumps(r["report"], indent=2))
    print(f"export done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
