"""A client that goes away frees its KV row at the next engine step, and /metrics shows it."""

from __future__ import annotations

import httpx
import pytest

from servers import ThreadServer, fake_loader, metric, wait_for  # noqa: E402

from skipdecode.serve.config import ServeConfig  # noqa: E402

LONG = {"prompt": "w5 w9", "max_tokens": 200, "ignore_eos": True}  # 200 steps x 20 ms = 4 s if not freed


def scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=10).text


@pytest.fixture
def server(tmp_path):
    with ThreadServer(ServeConfig(str(tmp_path), max_batch=4), fake_loader(delay=0.02)) as s:
        yield s


def test_a_streaming_disconnect_frees_the_row(server):
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", server.url + "/v1/completions", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            assert metric(scrape(server.url), "skipdecode_running_rows") == 1
    # the connection is closed: the row is freed at the next step, long before the 200 tokens
    wait_for(lambda: metric(scrape(server.url), "skipdecode_requests_total", 'finish_reason="cancelled"') == 1,
             2.0, "the cancelled request in /metrics")
    m = scrape(server.url)
    assert metric(m, "skipdecode_running_rows") == 0 and metric(m, "skipdecode_queue_depth") == 0
    assert metric(m, "skipdecode_output_tokens_total") < 100
    assert server.bridge.engine.num_running == 0 and not server.bridge._subs


def test_a_non_streaming_disconnect_frees_the_row(server):
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(server.url + "/v1/completions", json=LONG, timeout=0.5)
    wait_for(lambda: metric(scrape(server.url), "skipdecode_requests_total", 'finish_reason="cancelled"') == 1,
             2.0, "the cancelled request in /metrics")
    assert metric(scrape(server.url), "skipdecode_running_rows") == 0
    assert server.bridge.engine.num_running == 0 and not server.bridge._subs


def test_metrics_count_tokens_layers_and_latencies(server):
    for speedup in (1, 3):
        r = httpx.post(server.url + "/v1/completions", timeout=30, json={
            "prompt": "w5 w9", "max_tokens": 40, "ignore_eos": True, "temperature": 0,
            "skipdecode": {"speedup": speedup}})
        assert r.status_code == 200
    m = scrape(server.url)
    assert metric(m, "skipdecode_output_tokens_total") == 80
    assert metric(m, "skipdecode_requests_total", 'finish_reason="length"') == 2
    assert metric(m, "skipdecode_time_to_first_token_seconds_count") == 2
    assert metric(m, "skipdecode_time_per_output_token_seconds_count") == 2
    assert metric(m, "skipdecode_output_tokens_per_second") > 0
    assert 1 < metric(m, "skipdecode_mean_layers_per_token") < 6  # full depth and 3x, token-weighted
    layers = metric(m, "skipdecode_layers_total")
    assert layers == pytest.approx(metric(m, "skipdecode_mean_layers_per_token") * 80)
