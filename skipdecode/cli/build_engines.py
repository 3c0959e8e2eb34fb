"""`skipdecode build-engines`: TensorRT engines from a `--target tensorrt` export."""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("export", help="an export made with `skipdecode export --target tensorrt`")
    p.add_argument("--out", required=True, help="engine folder to write (atomically)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch of both profiles (default 32)")
    p.add_argument("--max-prompt", type=int, default=512, help="longest prompt of the prefill profile (default 512)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace (default 4 GiB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine folder")


def run(args) -> int:
    from skipdecode.runtime.tensorrt_engines import build_engines

    record = build_engines(args.export, args.out, args.max_batch, args.max_prompt, args.workspace_gb, args.overwrite)
    print(f"built {len(record['engines']['layers']) + 2} engines with TensorRT {record['tensorrt_version']} for "
          f"{record['gpu']} (sm {record['compute_capability']}) in {args.out}")
    return 0
