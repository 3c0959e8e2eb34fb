"""Every bad request gets its status and an OpenAI-shaped JSON error, and the server keeps
serving: against the live server (400, 401, 404, 413) and a threaded one over the fake
runtime (503 while loading, 429 when the queue is full)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from servers import KEY, ThreadServer, fake_loader, metric, wait_for  # noqa: E402

from skipdecode.schedule import Schedule  # noqa: E402
from skipdecode.serve.config import ServeConfig  # noqa: E402

AUTH = {"Authorization": f"Bearer {KEY}"}
OK = {"prompt": "w5 w9", "max_tokens": 4, "temperature": 0}
CHAT = {"messages": [{"role": "user", "content": "w5"}], "max_tokens": 4}
S12 = Schedule.for_speedup(12, 2, 32, 1).to_dict()
S6 = Schedule.for_speedup(6, 2, 32, 1).to_dict()

# (name, path, body (dict, or raw bytes), the error's param or None)
BAD = [
    ("malformed JSON", "completions", b'{"prompt": "w5", ', None),
    ("not an object", "completions", b"[1, 2]", None),
    ("no prompt", "completions", {"max_tokens": 3}, "prompt"),
    ("prompt of a wrong type", "completions", {"prompt": 5}, "prompt"),
    ("max_tokens as a string", "completions", {**OK, "max_tokens": "4"}, "max_tokens"),
    ("max_tokens a float", "completions", {**OK, "max_tokens": 4.5}, "max_tokens"),
    ("temperature as a string", "completions", {**OK, "temperature": "hot"}, "temperature"),
    ("temperature above 2", "completions", {**OK, "temperature": 3}, "temperature"),
    ("top_p of 0", "completions", {**OK, "top_p": 0}, "top_p"),
    ("stream not a bool", "completions", {**OK, "stream": "yes"}, "stream"),
    ("empty stop string", "completions", {**OK, "stop": [""]}, "stop"),
    ("prompt longer than max_seq", "completions", {**OK, "prompt": " ".join(["w5"] * 96)}, "prompt"),
    ("max_tokens above the limit", "completions", {**OK, "max_tokens": 95}, "max_tokens"),
    ("max_tokens of 0", "completions", {**OK, "max_tokens": 0}, "max_tokens"),
    ("token id outside the vocabulary", "completions", {**OK, "prompt": [5, 500]}, "prompt"),
    ("speedup above what the depth allows", "completions", {**OK, "skipdecode": {"speedup": 50}}, "skipdecode"),
    ("speedup below 1", "completions", {**OK, "skipdecode": {"speedup": 0.5}}, "skipdecode"),
    ("schedule for another depth", "completions", {**OK, "skipdecode": {"schedule": S12}}, "skipdecode"),
    ("schedule with min above max", "completions",
     {**OK, "skipdecode": {"schedule": {**S6, "min_layers": 5, "max_layers": 4}}}, "skipdecode"),
    ("schedule with an unknown field", "completions",
     {**OK, "skipdecode": {"schedule": {**S6, "layers": 3}}}, "skipdecode"),
    ("speedup and schedule", "completions", {**OK, "skipdecode": {"speedup": 2, "schedule": S6}}, "skipdecode"),
    ("unknown skipdecode option", "completions", {**OK, "skipdecode": {"fast": True}}, "skipdecode"),
    ("logprobs", "completions", {**OK, "logprobs": 2}, None),
    ("too many choices", "completions", {**OK, "n": 17}, "n"),
    ("no messages", "chat/completions", {"messages": []}, "messages"),
    ("unknown role", "chat/completions", {"messages": [{"role": "robot", "content": "w5"}]}, "messages"),
    ("an image part", "chat/completions",
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ("max_completion_tokens above the limit", "chat/completions", {**CHAT, "max_completion_tokens": 94},
     "max_completion_tokens"),
    ("tools", "chat/completions", {**CHAT, "tools": [{"type": "function"}]}, None),
]


def post(url: str, path: str, body, headers=AUTH, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/{path}", content=content, timeout=30,
                      headers={"Content-Type": "application/json", **headers}, **kw)


def assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and "\n" not in err["message"]
    return err


@pytest.mark.parametrize("name,path,body,param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_400_and_the_server_keeps_serving(live_server, name, path, body, param):
    err = assert_error(post(live_server.url, path, body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    assert post(live_server.url, "completions", OK).status_code == 200


def test_the_api_key_is_required_on_v1_only(live_server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        err = assert_error(post(live_server.url, "completions", OK, headers=headers), 401)
        assert err["code"] == "invalid_api_key"
    assert_error(httpx.get(live_server.url + "/v1/models", timeout=10), 401)
    assert httpx.get(live_server.url + "/health", timeout=10).status_code == 200
    assert httpx.get(live_server.url + "/metrics", timeout=10).status_code == 200
    assert post(live_server.url, "completions", OK).status_code == 200


def test_unknown_model_route_and_method(live_server):
    err = assert_error(post(live_server.url, "completions", {**OK, "model": "gpt-4"}), 404)
    assert err["code"] == "model_not_found"
    assert_error(post(live_server.url, "embeddings", OK), 404)
    assert_error(httpx.get(live_server.url + "/v1/completions", headers=AUTH, timeout=10), 405)


def test_bodies_above_the_limit_get_413(live_server):
    big = {"prompt": "w5 " * 400_000}  # 1.2 MB > the default 1 MiB
    assert assert_error(post(live_server.url, "completions", big), 413)["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted while read
        for _ in range(300):
            yield b" " * 4096
        yield json.dumps(OK).encode()

    r = httpx.post(live_server.url + "/v1/completions", content=chunks(), timeout=30,
                   headers={"Content-Type": "application/json", **AUTH})
    assert_error(r, 413)
    assert post(live_server.url, "completions", OK).status_code == 200


def test_503_while_loading_then_ready(tmp_path):
    gate = threading.Event()
    with ThreadServer(ServeConfig(str(tmp_path)), fake_loader(gate=gate)) as s:
        health = httpx.get(s.url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "loading"
        err = assert_error(post(s.url, "completions", OK, headers={}), 503)
        assert err["type"] == "service_unavailable" and "loading" in err["message"]
        assert metric(httpx.get(s.url + "/metrics", timeout=10).text, "skipdecode_ready") == 0
        gate.set()
        wait_for(lambda: httpx.get(s.url + "/health", timeout=10).status_code == 200, 30, "ready")
        assert post(s.url, "completions", OK, headers={}).status_code == 200


def test_a_failed_load_reports_its_error_and_stops_the_server(tmp_path):
    from starlette.testclient import TestClient

    from skipdecode.serve.app import create_app

    def load(config):
        raise RuntimeError("no graphs here")

    with TestClient(create_app(ServeConfig(str(tmp_path)), load)) as c:  # the app alone: it stays up
        wait_for(lambda: c.app.state.bridge.state == "failed", 10, "the load to fail")
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["error"] == "no graphs here"
        assert "no graphs here" in assert_error(c.post("/v1/completions", json=OK), 503)["message"]
    s = ThreadServer(ServeConfig(str(tmp_path)), load)
    with s:  # `skipdecode serve`'s server: it exits
        wait_for(lambda: not s.thread.is_alive(), 10, "the server to stop")


def test_429_when_the_queue_is_full(tmp_path):
    """One row, one waiting: a third request is refused, and later ones are served."""
    config = ServeConfig(str(tmp_path), max_batch=1, max_queue=1)
    long = {"prompt": "w5 w9", "max_tokens": 60, "ignore_eos": True, "stream": True}
    with ThreadServer(config, fake_loader(delay=0.02)) as s, httpx.Client(timeout=30) as c:
        with c.stream("POST", s.url + "/v1/completions", json=long) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the stream (a disconnect)
            next(lines)  # it holds the row
            with c.stream("POST", s.url + "/v1/completions", json=long) as waiting:
                assert waiting.status_code == 200
                err = assert_error(post(s.url, "completions", OK, headers={}), 429)
                assert err["type"] == "rate_limit_error" and err["code"] == "queue_full"
        wait_for(lambda: s.bridge.engine.num_running == 0 and s.bridge.engine.num_waiting == 0, 10,
                 "the rows to be freed")
        assert post(s.url, "completions", OK, headers={}).status_code == 200
        assert metric(httpx.get(s.url + "/metrics").text, "skipdecode_http_errors_total", 'status="429"') == 1
