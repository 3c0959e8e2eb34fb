"""`skipdecode bench`: decode tokens/s per backend, batch size and speedup, against the cost
model's ideal and against monolithic baselines (transformers, ONNX Runtime GenAI)."""

from __future__ import annotations

import sys
from pathlib import Path

from skipdecode.cli.dataclass_args import add_fields, comma_list, from_args
from skipdecode.cli.options import BACKEND_CHOICES
from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.bench import BenchConfig
from skipdecode.schedule import DECAYS

BASELINES = ("hf", "ort-genai")


def add_arguments(p):
    src = p.add_argument_group("model")
    src.add_argument("--model", help="smollm2-135m, an HF checkpoint folder or a .gguf: the torch backend's model and "
                     "the --compare baselines' (default: the export's source, else smollm2-135m)")
    src.add_argument("--export", help="per-layer export folder (onnxruntime) or engine folder (tensorrt)")
    p.add_argument("--backend", type=comma_list(str, BACKEND_CHOICES), default=None,
                   help="comma-separated: torch, onnxruntime, tensorrt (default: torch with --model, "
                   "onnxruntime with --export)")
    p.add_argument("--compare", type=comma_list(str, BASELINES), default=(),
                   help="baselines measured in the same run on the same checkpoint: hf (transformers "
                   "generate), ort-genai (ONNX Runtime GenAI's model builder graph, Llama family only)")
    g = p.add_argument_group("measurement (BenchConfig, runtime/bench.py)")
    add_fields(g, BenchConfig, choices={"decay": DECAYS})
    p.add_argument("--json", help="write the records (and machine info) to this JSON file")
    p.add_argument("--plot", help="write tokens/s against batch size to this PNG")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for every backend (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of every runtime: torch (and hf), onnxruntime, ort-genai (default: each "
                   "runtime's own, all cores)")
    p.add_argument("--hf-cache", choices=("dynamic", "static"), default="dynamic",
                   help="transformers' KV cache for --compare hf (default dynamic: faster on CPU here)")
    p.add_argument("--build-dir", default="build", help="where the ort-genai model is built and cached")
    g = p.add_argument_group("cost model (ideal speedup); defaults measured on this project's 2-core CPU")
    g.add_argument("--mem-bw", type=float, default=44.0, help="memory bandwidth, GB/s (default 44)")
    g.add_argument("--gflops", type=float, default=195.0, help="fp32 GEMM GFLOP/s (default 195)")


def _export_source(export_dir: str) -> str | None:
    """The checkpoint an export was made from (manifest.json's ``source``), for the baselines."""
    from skipdecode.runtime.manifest import MANIFEST, load_manifest

    if not (Path(export_dir) / MANIFEST).is_file():
        return None
    return load_manifest(export_dir, verify=False).source


def _make_runners(args, backends, hf_dir, og_dir) -> list:
    """Layer-chaining backends first, then the baselines."""
    from skipdecode.runtime import bench

    if args.threads and hf_dir is not None:  # torch (and hf) share one intra-op pool
        import torch

        torch.set_num_threads(args.threads)
    runners = []
    for kind in backends:
        if kind == "torch":
            import torch

            from skipdecode.models import load_model
            from skipdecode.models.backend import TorchBackend

            if args.device.startswith("cuda") and not torch.cuda.is_available():
                raise SkipDecodeError("--device cuda: no CUDA device is available")
            loaded = load_model(str(hf_dir), args.device, torch.float32)
            runner = bench.LoopRunner(TorchBackend(loaded.model))
            runner.note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
            runners.append(runner)
        else:
            from skipdecode.runtime.api import open_backend

            runner = bench.LoopRunner(open_backend(args.export, kind, args.device, threads=args.threads), kind)
            if kind == "onnxruntime":
                import onnxruntime

                runner.note = f"onnxruntime {onnxruntime.__version__}, {args.threads or 'all'} intra-op threads"
            runners.append(runner)
    if "hf" in args.compare:
        import torch

        from skipdecode.models.hf_baseline import HFGenerateRunner

        runner = HFGenerateRunner(str(hf_dir), args.hf_cache, args.device)
        runner.note += f", {torch.get_num_threads()} threads"
        runners.append(runner)
    if "ort-genai" in args.compare:
        from skipdecode.runtime.ort_genai import OrtGenAIRunner

        runners.append(OrtGenAIRunner(og_dir, args.threads))
    return runners


def run(args) -> int:
    from tqdm import tqdm

    from skipdecode.runtime import bench
    from skipdecode.runtime.costmodel import Machine, ModelShape

    backends = args.backend or (("onnxruntime",) if args.export else ("torch",))
    needs_model = "torch" in backends or bool(args.compare)
    if args.export is None and any(b != "torch" for b in backends):
        raise SkipDecodeError(f"--backend {','.join(backends)} needs --export DIR")
    if args.threads is not None and args.threads < 1:
        raise SkipDecodeError(f"--threads must be >= 1, got {args.threads}")
    if args.export is not None and not Path(args.export).is_dir():
        raise SkipDecodeError(f"--export {args.export}: no such folder")
    config = from_args(BenchConfig, args)
    machine = Machine(args.mem_bw, args.gflops)

    hf_dir = None
    spec = args.model or (_export_source(args.export) if args.export else None) or "smollm2-135m"
    if needs_model or args.export is None:
        from skipdecode.models.loading import resolve

        hf_dir = resolve(spec)
    shape = ModelShape.from_dir(hf_dir if hf_dir is not None else args.export)
    config.schedules(shape.num_layers)  # an unreachable speedup fails here, before any loading
    og_dir = None
    if "ort-genai" in args.compare:  # build (or find) the baseline first: its errors come early
        from skipdecode.runtime.ort_genai import build_model

        og_dir = build_model(hf_dir, args.build_dir)
    runners = _make_runners(args, backends, hf_dir, og_dir)
    info = bench.machine_info()
    bar = tqdm(total=bench.count_runs(runners, config), desc="bench", unit="run", file=sys.stderr)

    def progress(label: str) -> None:
        bar.set_postfix_str(label, refresh=False)
        bar.update()

    records = bench.run_bench(runners, shape, config, machine, progress)
    bar.close()
    info["loadavg_1m_end"] = bench.machine_info()["loadavg_1m"]
    model = str(args.export if hf_dir is None else spec)
    print(f"{model}: prompt {config.prompt_len}, {config.new_tokens} new tokens (EOS ignored), greedy, "
          f"medians of {config.repeats}; {info['cpu']}, {info['cores']} cores, load {info['loadavg_1m']} -> "
          f"{info['loadavg_1m_end']}")
    print(bench.format_table(records))
    for r in runners:
        if getattr(r, "note", ""):
            print(f"  {r.name}: {r.note}")
    if args.json:
        bench.write_json(args.json, records, config, machine, model, info)
    if args.plot:
        threads = f"{args.threads} thread(s) per runtime" if args.threads else "default threads"
        bench.plot_records(records, args.plot, f"{model}: prompt {config.prompt_len}, {config.new_tokens} new "
                           f"tokens, fp32, {info['cores']} cores, {threads}")
    return 0
