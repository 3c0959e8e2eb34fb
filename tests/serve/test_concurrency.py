"""64 concurrent streamed requests at mixed speedups on one live server: every one completes,
each equal to its output when it runs alone."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from servers import KEY, metric  # noqa: E402

SPEEDUPS = (1, 1.5, 2, 3)
PROMPTS = [" ".join(f"w{3 + (7 * i + 5 * j) % 90}" for j in range(1 + i % 5)) for i in range(16)]


def test_64_concurrent_streams_with_mixed_speedups_equal_their_solo_outputs(live_server):
    jobs = [(p, s, 8 + 4 * (i % 3)) for i, p in enumerate(PROMPTS) for s in SPEEDUPS]
    assert len(jobs) == 64
    solo_client = openai.OpenAI(base_url=live_server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    solo = [solo_client.completions.create(model="tiny-llama", prompt=p, max_tokens=n, temperature=0,
                                           extra_body={"skipdecode": {"speedup": s}}) for p, s, n in jobs]

    async def stream(client, p, s, n):
        text, finish = "", None
        async for chunk in await client.completions.create(
                model="tiny-llama", prompt=p, max_tokens=n, temperature=0, stream=True,
                extra_body={"skipdecode": {"speedup": s}}):
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def all_at_once():
        client = openai.AsyncOpenAI(base_url=live_server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        try:
            return await asyncio.wait_for(asyncio.gather(*(stream(client, *job) for job in jobs)), timeout=180)
        finally:
            await client.close()

    t0 = time.perf_counter()
    got = asyncio.run(all_at_once())
    elapsed = time.perf_counter() - t0
    for (p, s, n), (text, finish), alone in zip(jobs, got, solo):
        assert (text, finish) == (alone.choices[0].text, alone.choices[0].finish_reason), (p, s, n)
    layers = {s: alone.usage.model_extra["mean_layers"] for (_, s, _), alone in zip(jobs, solo)}
    assert layers[1] == 6 and layers[3] < layers[2] < layers[1.5] < 6  # the speedups were honoured
    m = httpx.get(live_server.url + "/metrics", timeout=10).text
    assert metric(m, "skipdecode_running_rows") == 0 and metric(m, "skipdecode_queue_depth") == 0
    assert metric(m, "skipdecode_time_to_first_token_seconds_count") >= 128
    print(f"64 concurrent streams in {elapsed:.2f} s")
