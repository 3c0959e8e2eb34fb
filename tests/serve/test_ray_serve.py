"""`skipdecode serve --ray` on a local Ray cluster (127.0.0.1) with 2 replicas: requests spread
over both; a replica killed under load ends its in-flight requests with an error (no hang), no
other request is lost, and a replacement comes up. The one slow serve test (about a minute)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("ray.serve")
psutil = pytest.importorskip("psutil")

from servers import ROOT, free_port, sse_events, wait_for  # noqa: E402

REPLICA = "x-skipdecode-replica"
LONG = {"prompt": "w5 w9", "max_tokens": 90, "ignore_eos": True, "temperature": 0}


def stop_tree(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM a process we started, then its remaining descendants, one by one by pid."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    alive = [p for p in tree if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=15)
    for p in alive:
        p.kill()


@pytest.fixture
def ray_head(tmp_path):
    """A local Ray cluster on 127.0.0.1 (`ray start --head --block`, stopped by the test)."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--num-cpus", "2", "--disable-usage-stats", "--include-dashboard", "false",
           "--temp-dir", temp, "--ray-client-server-port", str(free_port()),
           "--dashboard-agent-listen-port", str(free_port())]
    log = open(tmp_path / "ray.log", "w")
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # the test stops Serve itself first
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def gcs_up():
        if head.poll() is not None:
            raise AssertionError(f"ray start exited with {head.returncode}:\n{(tmp_path / 'ray.log').read_text()[-3000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(gcs_up, 90, "the Ray head", interval=0.5)
        yield f"127.0.0.1:{port}"
    finally:
        stop_tree(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_two_replicas_spread_requests_and_survive_a_replica_kill(serve_export, ray_head, tmp_path):
    http = free_port()
    url = f"http://127.0.0.1:{http}"
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "skipdecode.cli.main", "serve", str(serve_export), "--ray",
                              "--replicas", "2", "--ray-address", ray_head, "--host", "127.0.0.1", "--port", str(http),
                              "--replica-cpus", "0.5", "--threads", "1", "--max-batch", "1", "--shutdown-timeout", "5"],
                             stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def ready():
        if serve.poll() is not None:
            raise AssertionError(f"serve --ray exited with {serve.returncode}:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
        try:
            return httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 180, "the Ray Serve app", interval=0.5)
        expected = httpx.post(url + "/v1/completions", json=LONG, timeout=60).json()["choices"][0]["text"]

        # ---- requests spread over both replicas ------------------------------------------------------
        with ThreadPoolExecutor(8) as pool:
            heads = list(pool.map(lambda _: httpx.post(url + "/v1/completions", json={**LONG, "max_tokens": 4},
                                                       timeout=60).headers[REPLICA], range(16)))
        replicas = set(heads)
        assert len(replicas) == 2, heads

        # ---- one replica killed under load ---------------------------------------------------------
        runs: list[dict] = [{} for _ in range(12)]

        def stream(run: dict) -> None:
            try:
                with httpx.stream("POST", url + "/v1/completions", json={**LONG, "stream": True}, timeout=60) as r:
                    run.update(status=r.status_code, replica=r.headers.get(REPLICA), start=time.monotonic())
                    if r.status_code != 200:
                        run["body"] = r.read().decode(errors="replace")[:500]
                    run["events"] = sse_events(r.iter_lines())
            except httpx.HTTPError as e:  # the connection cut mid-stream
                run["error"] = f"{type(e).__name__}: {e}"
            run["end"] = time.monotonic()

        threads = [threading.Thread(target=stream, args=(run,), daemon=True) for run in runs]
        for t in threads:
            t.start()
        # the victim: a replica with a stream in flight (one row each: the others queue behind it)
        victim = wait_for(lambda: next((r["replica"] for r in runs if "start" in r and "end" not in r), None), 30,
                          "a stream in flight")
        pid = int(victim.rsplit(":", 1)[1])
        killed_at = time.monotonic()
        psutil.Process(pid).kill()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a request hangs"

        def ok(r):
            events = r.get("events") or []
            return (r.get("status") == 200 and "error" not in r and events[-1:] == ["[DONE]"]
                    and "".join(e["choices"][0]["text"] for e in events[:-1]) == expected)

        running = [r for r in runs if r.get("replica") == victim and r["end"] > killed_at]
        assert running, "the kill landed when no request was running on the replica"
        for r in running:  # ended with an error: a cut stream, an error event or a 5xx
            events = r.get("events") or []
            assert "error" in r or r.get("status", 200) >= 500 or events[-1:] != ["[DONE]"], r
        # a request the proxy had just handed to the victim, before our app answered, gets the
        # proxy's own 500 (no replica header) at the kill: it was in flight on the victim too
        handed = [r for r in runs if r.get("replica") is None and not ok(r) and r["end"] - killed_at < 10]
        lost = [r for r in runs if r not in running and r not in handed and not ok(r)]
        assert not lost, lost
        in_flight = running + handed

        # ---- the replacement -------------------------------------------------------------------------
        def replacement():
            r = httpx.post(url + "/v1/completions", json={**LONG, "max_tokens": 4}, timeout=60)
            assert r.status_code == 200, r.text  # and nothing sent after the kill is lost
            return r.headers[REPLICA] not in replicas

        wait_for(replacement, 120, "a replacement replica", interval=0.2)
        print(f"victim {victim}: {len(in_flight)} in flight ended with an error, "
              f"{sum(map(ok, runs))} of {len(runs)} completed")
    finally:
        stop_tree(serve)
        log.close()
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
