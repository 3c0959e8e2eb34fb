"""`skipdecode` console script: one subcommand per module, imported only when used (so
`skipdecode run` on an edge device never imports torch)."""

from __future__ import annotations

import argparse
import importlib
import sys

from skipdecode import __version__
from skipdecode.errors import SkipDecodeError

# subcommand -> (module under skipdecode.cli, one-line help), in pipeline order
COMMANDS = {
    "demo": ("demo", "the main job: fine-tune SmolLM2 under a skip schedule, export, serve on ONNX Runtime, score"),
    "generate": ("generate", "generate with the PyTorch reference under a skip schedule"),
    "train": ("train", "fine-tune a model under a skip schedule (E2E CSV or JSONL data)"),
    "tune": ("tune", "choose a checkpoint's schedule at a target realised speedup on held-out dev data"),
    "export": ("export", "export per-layer ONNX graphs (embed, layers, lm_head) with a validated manifest"),
    "run": ("run", "generate through an export with ONNX Runtime or TensorRT (no torch needed)"),
    "build-engines": ("build_engines", "build TensorRT engines from a --target tensorrt export"),
    "calibrate": ("calibrate", "quantize an export (int8 dynamic/static, int4) calibrated under the skip schedule"),
    "divergence": ("divergence", "KL divergence of quantized exports from their fp32 source, paired between them"),
    "eval": ("eval", "score generations against references (BLEU, ROUGE-L) with the realised speedup"),
    "compare": ("compare", "compare eval reports: a table and a quality-vs-speedup plot"),
    "bench": ("bench", "decode tokens/s per backend, batch size and speedup vs ideal and baselines"),
    "bench-serve": ("bench_serve", "open-loop serving load: static vs continuous batching, per-request speedups"),
    "serve": ("serve", "an OpenAI-compatible HTTP server over an export (streaming, metrics; --ray: replicas)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skipdecode", description="SkipDecode: fine-tune, export and serve "
                                     "LLMs that skip layers while decoding.")
    parser.add_argument("--version", action="version", version=f"skipdecode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(f"skipdecode.cli.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return importlib.import_module(f"skipdecode.cli.{args._module}").run(args) or 0
    except SkipDecodeError as e:
        print(f"skipdecode {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # config validation (schedule bounds, sampling options)
        print(f"skipdecode {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skipdecode {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
