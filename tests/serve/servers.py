"""Servers for the serve tests, always on 127.0.0.1 and a free port, always stopped; every wait
is bounded in time.

- ``SubprocessServer``: ``python -m skipdecode.cli.main serve EXPORT ...``, as users run it.
- ``ThreadServer``: the app on uvicorn in a thread of the test process, for a fake runtime
  (tests/runtime/fake.py's backend with an optional delay per step) and hooks into loading.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # fake.py: the engine tests' backend
from fake import FakeBackend  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key"
CHAT_TEMPLATE = ("{% for m in messages %}{{ {'system': 'w10', 'user': 'w11', 'assistant': 'w12'}[m['role']] }} "
                 "{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w12{% endif %}")
"""A chat template over the tiny word-level vocabulary: 'w11 w5 w9 w12' for one user message."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.05):
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def add_chat_template(export: Path) -> None:
    cfg_file = export / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    cfg_file.write_text(json.dumps({**cfg, "chat_template": CHAT_TEMPLATE}))


def metric(text: str, name: str, labels: str = "") -> float:
    """A sample's value from Prometheus text (``labels`` as written: 'finish_reason="cancelled"')."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


# ---- a server process --------------------------------------------------------------------------------
class SubprocessServer:
    def __init__(self, export: Path, *args: str, log: Path, ready_timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "skipdecode.cli.main", "serve", str(export), "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning", *args]
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for(self._ready, ready_timeout, f"{' '.join(cmd)} to be ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait (bounded) for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.terminate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            self._out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---- the app in a thread, over a fake runtime ------------------------------------------------------
class FakeTokenizer:
    """'w5 w9' <-> [5, 9]; ids 0-2 are special (pad, bos, eos) and decode to nothing."""

    eos_ids = [2]
    pad_id = 0
    vocab_size = 24

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [int(w[1:]) for w in text.split() if w[1:].isdigit() and int(w[1:]) < self.vocab_size]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(f"w{i}" for i in ids if i > 2)


class SlowBackend(FakeBackend):
    """The fake backend, sleeping ``delay`` seconds per decode step (a step that takes time)."""

    def __init__(self, delay: float = 0.0, folder: Path | None = None, **kw):
        super().__init__(**kw)
        self.delay = delay
        self.dir = folder or Path(".")

    def decode(self, ids, positions, ranges):
        time.sleep(self.delay)
        return super().decode(ids, positions, ranges)


def fake_loader(delay: float = 0.0, gate: threading.Event | None = None, folder: Path | None = None):
    """A loader for create_app: a Runtime over the slow fake backend, held until ``gate`` is set."""
    from skipdecode.runtime.api import Runtime

    def load(config):
        if gate is not None and not gate.wait(60):
            raise RuntimeError("the test never opened the loading gate")
        return Runtime(SlowBackend(delay, folder), FakeTokenizer())

    return load


class ThreadServer:
    def __init__(self, config, load):
        import uvicorn

        from skipdecode.serve.app import create_app
        from skipdecode.serve.server import DrainingServer

        self.app = create_app(config, load)
        self.bridge = self.app.state.bridge
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        uv = uvicorn.Config(self.app, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=int(config.shutdown_timeout_s) + 5)
        self.server = DrainingServer(uv, self.bridge)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "the threaded server to start")
        return self

    def sigterm(self) -> None:
        """What SIGTERM does to `skipdecode serve` (signals reach only the main thread)."""
        self.server.handle_exit(signal.SIGTERM, None)

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()
        assert not self.thread.is_alive(), "the threaded server did not stop"


def sse_events(lines) -> list:
    """Parsed ``data:`` payloads of an SSE stream ('[DONE]' kept as the string)."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
