"""`skipdecode serve`: an OpenAI-compatible HTTP server over an export (library: skipdecode.serve).

One process serves one export with one continuous-batching engine; ``--ray`` deploys the same
app as replicas behind Ray Serve's proxy. Needs ``pip install "skipdecode[serve]"`` (no torch)."""

from __future__ import annotations

import os

from skipdecode.errors import SkipDecodeError


def add_arguments(p):
    p.add_argument("export", help="export folder (onnxruntime) or engine folder (tensorrt)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu", help="cpu or cuda (onnxruntime); tensorrt always runs on cuda")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores; "
                   "with --ray: the replica's CPUs)")
    p.add_argument("--max-batch", type=int, default=8, help="KV rows: requests decoding at once (default 8)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting for a row before new ones get "
                   "429 (default 256)")
    p.add_argument("--api-key", default=os.environ.get("SKIPDECODE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $SKIPDECODE_API_KEY, else none)")
    p.add_argument("--speedup", type=float, default=None, help="default schedule solved for this layer speedup "
                   "(default: the export's schedule); requests may pick their own")
    p.add_argument("--model-name", default=None, help="model id to serve under (default: the export folder's name)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger bodies get 413 (default 1 MiB)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM, streams still running after this many seconds end with an error event")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    g = p.add_argument_group("Ray Serve (pip install \"skipdecode[serve-ray]\")")
    g.add_argument("--ray", action="store_true", help="deploy as replicas behind Ray Serve's HTTP proxy")
    g.add_argument("--replicas", type=int, default=1, help="replicas, each with its own engine (default 1)")
    g.add_argument("--ray-address", default=None, help="cluster address (default: $RAY_ADDRESS, the running local "
                   "cluster, else a new local one)")
    g.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise SkipDecodeError(f'skipdecode serve needs the serve extra ({e.name} is missing): '
                              'pip install "skipdecode[serve]"') from None
    from skipdecode.serve.config import ServeConfig

    config = ServeConfig(args.export, args.backend, args.device, args.threads, args.max_batch, args.max_queue,
                         args.api_key or None, args.speedup, args.model_name, args.max_body_bytes,
                         shutdown_timeout_s=args.shutdown_timeout)
    if args.ray:
        from skipdecode.serve.ray_app import deploy

        return deploy(config, args.replicas, args.ray_address, args.host, args.port, args.replica_cpus)
    from skipdecode.serve.server import serve

    return serve(config, args.host, args.port, args.log_level)
