"""`skipdecode serve` the command: no torch, one-line errors."""

from __future__ import annotations

import socket

from servers import free_port  # noqa: E402
from tiny import run_without_torch  # noqa: E402

from skipdecode.cli.main import main  # noqa: E402


def test_serve_works_with_torch_and_transformers_unimportable(serve_export):
    code = f"""
import time
from starlette.testclient import TestClient
from skipdecode.serve.app import create_app
from skipdecode.serve.config import ServeConfig
with TestClient(create_app(ServeConfig({str(serve_export)!r}, threads=1))) as c:
    for _ in range(600):
        if c.get("/health").status_code == 200:
            break
        time.sleep(0.05)
    r = c.post("/v1/completions", json={{"prompt": "w5 w9", "max_tokens": 4, "temperature": 0}})
    assert r.status_code == 200, r.text
    r = c.post("/v1/chat/completions", json={{"messages": [{{"role": "user", "content": "w5"}}], "max_tokens": 4}})
    assert r.status_code == 200, r.text
    assert c.get("/metrics").status_code == 200
"""
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_bad_export_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--port", str(free_port()), "--log-level", "critical"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("skipdecode serve: error: cannot load") and "not an export" in err[-1]


def test_a_port_in_use_is_one_line_and_status_2(serve_export, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(serve_export), "--port", str(port), "--log-level", "critical"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"skipdecode serve: error: could not listen on 127.0.0.1:{port} (in use, or not an address of this host)"


def test_bad_options_are_one_line(serve_export, capsys):
    assert main(["serve", str(serve_export), "--max-batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "skipdecode serve: error: max_batch must be >= 1, got 0"
