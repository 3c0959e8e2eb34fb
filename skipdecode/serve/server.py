"""Run the app on uvicorn, draining on SIGTERM.

uvicorn alone stops accepting connections on SIGTERM and waits for open responses, then cancels
them without a word after its timeout. Here the signal also starts the bridge's drain: new
requests get 503, streams still running after ``shutdown_timeout_s`` end with an error event
(non-streamed ones with a 503), and uvicorn's own timeout is only a backstop behind it. The
process then exits 0. A model that fails to load stops the server with that one-line error.
"""

from __future__ import annotations

import logging
import signal
import sys

import uvicorn

from skipdecode.errors import SkipDecodeError
from skipdecode.serve.app import create_app
from skipdecode.serve.bridge import load_runtime
from skipdecode.serve.config import ServeConfig

log = logging.getLogger("skipdecode.serve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, bridge):
        super().__init__(config)
        self.bridge = bridge

    def handle_exit(self, sig, frame) -> None:
        self.bridge.drain(self.bridge.config.shutdown_timeout_s)  # assignments only: signal-safe
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.bridge.state == "failed":
            self.should_exit = True
        return await super().on_tick(counter)


def _exit_cleanly(sig, frame):
    raise SystemExit(0)


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          load=load_runtime) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a graceful shutdown. Raises SkipDecodeError when the
    model cannot be loaded."""
    app = create_app(config, load)
    bridge = app.state.bridge
    uv = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                        timeout_graceful_shutdown=int(config.shutdown_timeout_s) + 5, access_log=False)
    server = DrainingServer(uv, bridge)
    # uvicorn re-raises the signal it caught once it has shut down; with the default handler a
    # SIGTERM would then kill the process (status -15) after a clean drain
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()
    except SystemExit as e:
        if e.code not in (0, None) and server.started:
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if bridge.state == "failed":
        raise SkipDecodeError(f"cannot load {config.export}: {bridge.error}")
    if not server.started:
        raise SkipDecodeError(f"could not listen on {host}:{port} (in use, or not an address of this host)")
    print("skipdecode serve: shut down", file=sys.stderr)
    return 0
