"""Scale-out on Ray Serve: the same app as N replicas behind Ray Serve's HTTP proxy.

Each replica is a Ray actor with its own engine thread, KV rows and CPU share; the proxy on
every node spreads requests over replicas that have room (``max_ongoing_requests``) and queues
the rest. A replica is routed to only once its graphs are loaded (``wait_loaded``), and one
that dies is replaced by the Serve controller; requests in flight on it end with an error.

The same call works on a local cluster (``ray start --head``) and on a multi-node one: give its
address. Every node needs skipdecode installed and the export at the same path.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.serve.config import ServeConfig

APP_NAME = "skipdecode"


def deployment(config: ServeConfig, replicas: int = 1, replica_cpus: float = 1.0):
    """The Ray Serve deployment (unbound) of ``config``'s app."""
    from ray import serve

    from skipdecode.serve.app import create_app

    cfg = dataclasses.replace(config, wait_loaded=True)

    def build():
        return create_app(cfg)

    @serve.ingress(build)
    class SkipDecodeReplica:
        def check_health(self):
            bridge = self.app.state.bridge
            if bridge.state == "failed":
                raise RuntimeError(f"cannot load {cfg.export}: {bridge.error}")

    return serve.deployment(
        SkipDecodeReplica, name=APP_NAME, num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus},
        max_ongoing_requests=2 * cfg.max_batch, max_queued_requests=cfg.max_queue,
        graceful_shutdown_timeout_s=cfg.shutdown_timeout_s, health_check_period_s=2.0)


def deploy(config: ServeConfig, replicas: int = 1, address: str | None = None, host: str = "127.0.0.1",
           port: int = 8000, replica_cpus: float = 1.0, block: bool = True) -> int:
    """Deploy on the cluster at ``address`` (None: the running local one, else a new local
    one), serve until SIGTERM/SIGINT, then delete the app. Raises SkipDecodeError."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SkipDecodeError('--ray needs Ray Serve: pip install "skipdecode[serve-ray]"') from None
    if replicas < 1:
        raise SkipDecodeError(f"--replicas must be >= 1, got {replicas}")
    if not replica_cpus > 0:
        raise SkipDecodeError(f"--replica-cpus must be > 0, got {replica_cpus}")
    export = Path(config.export).resolve()
    if not export.is_dir():
        raise SkipDecodeError(f"{export}: no such export folder")
    config = dataclasses.replace(config, export=str(export), model_name=config.model_id)
    if config.threads is None:  # ONNX Runtime would take every core of the node per replica
        config = dataclasses.replace(config, threads=max(1, round(replica_cpus)))
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
    except Exception as e:  # ConnectionError and friends, with long messages
        raise SkipDecodeError(f"cannot reach the Ray cluster at {address or 'auto'}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(config, replicas, replica_cpus).bind(), name=APP_NAME, route_prefix="/")
    except Exception as e:
        ray.shutdown()
        raise SkipDecodeError(f"Ray Serve deployment failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    print(f"skipdecode serve: {replicas} replica(s) of {config.model_id} on Ray Serve at http://{host}:{port}/v1",
          file=sys.stderr, flush=True)
    if not block:
        return 0
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        try:
            serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    print("skipdecode serve: shut down", file=sys.stderr)
    return 0
