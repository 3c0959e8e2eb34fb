"""HTTP load on any OpenAI-compatible server (ours, vLLM, ...): serve_bench's workloads sent as
streamed ``/v1/completions`` requests, Poisson arrivals or all at once, timed by the client.

Every request sends its prompt as token ids, ``max_tokens`` = the job's output length,
``temperature`` 0 and ``ignore_eos`` (an extension both vLLM and ``skipdecode serve`` accept), so
each server generates exactly the tokens asked for and speed does not depend on the weights.

- TTFT: from sending the request to the first streamed chunk that carries text.
- TPOT: the time from that chunk to the last one, over the tokens after the first.
- Tokens: the stream's ``usage`` (``stream_options.include_usage``); ``mean_layers`` too where the
  server reports it (ours), else nan. Prefill time is not visible over HTTP: ``prefill_share`` is nan.

The records are serve_bench's ``ServeRecord``: ``mode`` is the run's label (the server), ``speedup``
what the requests asked for ('default': the server's own). Imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Sequence

import httpx

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.serve_bench import Job, ServeRecord, arrival_times, make_record, to_dicts


@dataclass
class Sample:
    """One request as the client saw it."""

    ok: bool
    tokens: int = 0
    ttft_s: float | None = None
    tpot_s: float | None = None
    mean_layers: float = float("nan")
    error: str = ""


def request_body(job: Job, model: str | None, speedup: float | None = None) -> dict:
    body = {"prompt": list(job.prompt), "max_tokens": job.new_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    if speedup is not None:
        body["skipdecode"] = {"speedup": speedup}
    return body


async def send(client: httpx.AsyncClient, url: str, body: dict) -> Sample:
    """POST one streamed completion and time it; failures come back as a Sample, never raised."""
    t0 = time.perf_counter()
    first = last = None
    chunks, usage = 0, None
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                return Sample(False, error=f"HTTP {r.status_code}: {text[:200]}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    return Sample(False, error=f"stream error: {json.dumps(event['error'])[:200]}")
                now = time.perf_counter()
                choices = event.get("choices") or ()
                if any(c.get("text") for c in choices):
                    first = first if first is not None else now
                    chunks += 1
                if choices and first is not None:
                    last = now
                usage = event.get("usage") or usage
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return Sample(False, error=f"{type(e).__name__}: {e}")
    if first is None:
        return Sample(False, error="the stream carried no text")
    tokens = int(usage["completion_tokens"]) if usage else chunks
    tpot = (last - first) / (tokens - 1) if tokens > 1 else None
    layers = float(usage.get("mean_layers") or math.nan) if usage else math.nan
    return Sample(True, tokens, first - t0, tpot, layers)


async def run_async(url: str, jobs: Sequence[Job], rate: float, model: str | None = None,
                    speedup: float | None = None, label: str = "http", seed: int = 0, timeout_s: float = 600.0,
                    api_key: str | None = None) -> tuple[ServeRecord, list[Sample]]:
    """Send ``jobs`` to ``url`` (the server's /v1 base) arriving at ``rate`` requests/s (``inf``:
    all at once); requests still running after ``timeout_s`` are cancelled (their connections
    close, so the server frees their rows) and not counted."""
    endpoint = url.rstrip("/") + "/completions"
    arrivals = arrival_times(len(jobs), rate, seed)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    limits = httpx.Limits(max_connections=len(jobs) + 1, max_keepalive_connections=len(jobs) + 1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=30), limits=limits, headers=headers,
                                 trust_env=False) as client:  # no proxy between the client and the server
        t0 = time.perf_counter()

        async def one(i: int) -> Sample:
            await asyncio.sleep(max(0.0, arrivals[i] - (time.perf_counter() - t0)))
            return await send(client, endpoint, request_body(jobs[i], model, speedup))

        tasks = [asyncio.create_task(one(i)) for i in range(len(jobs))]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s) if tasks else (set(), set())
        wall = time.perf_counter() - t0
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    samples = [t.result() if t in done else Sample(False, error="timed out") for t in tasks]
    ok = [s for s in samples if s.ok]
    sp = "default" if speedup is None else f"{speedup:g}"
    record = make_record(label, sp, rate, wall, [s.tokens for s in ok], [s.ttft_s for s in ok],
                         [s.tpot_s for s in ok if s.tpot_s is not None], [s.mean_layers for s in ok], math.nan)
    return record, samples


def run(url: str, jobs: Sequence[Job], rate: float, **kw) -> tuple[ServeRecord, list[Sample]]:
    return asyncio.run(run_async(url, jobs, rate, **kw))


def served_model(url: str, api_key: str | None = None, timeout: float = 30) -> str:
    """The first model id of ``GET {url}/models``: what the server calls the model."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        r = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=timeout, trust_env=False)
        r.raise_for_status()
        return r.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        raise SkipDecodeError(f"{url}/models: cannot read the served model ({type(e).__name__}: {e})") from None


def json_records(records: Sequence[ServeRecord]) -> list[dict]:
    """to_dicts with nan (what HTTP cannot see) as null, so the JSON is standard."""
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()} for d in to_dicts(records)]
