"""SIGTERM during streaming: in-flight streams finish (or, past the timeout, end with an error
event), nothing hangs, and `skipdecode serve` exits 0."""

from __future__ import annotations

import contextlib
import threading

import httpx
import pytest

from servers import SubprocessServer, ThreadServer, fake_loader, sse_events, wait_for  # noqa: E402

from skipdecode.serve.config import ServeConfig  # noqa: E402


def test_sigterm_lets_in_flight_streams_finish_and_exits_0(serve_export, tmp_path):
    server = SubprocessServer(serve_export, "--threads", "1", "--shutdown-timeout", "30", log=tmp_path / "log")
    body = {"prompt": "w5 w9", "max_tokens": 80, "ignore_eos": True, "temperature": 0, "stream": True}
    with server, httpx.Client(timeout=60) as c, contextlib.ExitStack() as stack:
        streams = [stack.enter_context(c.stream("POST", server.url + "/v1/completions", json=body)) for _ in range(4)]
        lines = [s.iter_lines() for s in streams]
        firsts = [next(it) for it in lines]  # every stream is running
        assert server.terminate(timeout=60) == 0  # waits for the drain, bounded
        for first, it in zip(firsts, lines):
            events = sse_events([first, *it])
            assert events[-1] == "[DONE]"
            assert events[-2]["choices"][0]["finish_reason"] == "length"
            assert len("".join(e["choices"][0]["text"] for e in events[:-1]).split()) > 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health", timeout=5)
    assert "shut down" in server.log.read_text()


def test_streams_past_the_shutdown_timeout_end_with_an_error_event(tmp_path):
    config = ServeConfig(str(tmp_path), shutdown_timeout_s=0.5)
    body = {"prompt": "w5 w9", "max_tokens": 200, "ignore_eos": True}  # 200 x 20 ms: past the timeout
    with ThreadServer(config, fake_loader(delay=0.02)) as s, httpx.Client(timeout=30) as c:
        plain: dict = {}
        t = threading.Thread(target=lambda: plain.update(r=c.post(s.url + "/v1/completions", json=body)))
        with c.stream("POST", s.url + "/v1/completions", json={**body, "stream": True}) as r:
            lines = r.iter_lines()
            first = next(lines)
            t.start()
            wait_for(lambda: s.bridge.engine.num_running == 2, 5, "both requests running")
            s.sigterm()
            assert s.bridge.state == "draining"
            events = sse_events([first, *lines])  # ends (bounded by the client timeout), no hang
        t.join(timeout=30)
        err = events[-1]["error"]
        assert err["type"] == "service_unavailable" and "shut down" in err["message"] and "[DONE]" not in events
        assert plain["r"].status_code == 503 and "shut down" in plain["r"].json()["error"]["message"]
    assert not s.thread.is_alive()
