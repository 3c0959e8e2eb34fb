"""The engine bridge on its own thread, over the fake runtime (no HTTP)."""

from __future__ import annotations

import asyncio

import pytest

from servers import SlowBackend, fake_loader, wait_for  # noqa: E402

from skipdecode.errors import SkipDecodeError  # noqa: E402
from skipdecode.runtime.request import Request  # noqa: E402
from skipdecode.serve.bridge import Done, EngineBridge, Failed, Token, Unavailable  # noqa: E402
from skipdecode.serve.config import ServeConfig  # noqa: E402


@pytest.fixture
def bridge(tmp_path):
    b = EngineBridge(ServeConfig(str(tmp_path), max_batch=2), fake_loader())
    b.start()
    assert b.wait_loaded(30) and b.state == "ready"
    yield b
    b.stop(timeout=1)


async def drain(sub) -> list:
    return [item async for item in sub]


def test_items_arrive_in_order_and_match_the_engine(bridge):
    async def go():
        sub = await bridge.submit([Request((5, 9), 6, ignore_eos=True, request_id="a")])
        return await asyncio.wait_for(drain(sub), 10)

    items = asyncio.run(go())
    tokens = [i.event.token_id for i in items if isinstance(i, Token)]
    (done,) = [i for i in items if isinstance(i, Done)]
    assert done.result.token_ids == tokens and len(tokens) == 6 and isinstance(items[-1], Done)


def test_submit_is_all_or_none(bridge):
    async def go():
        with pytest.raises(SkipDecodeError, match="above the"):
            await bridge.submit([Request((5,), 4, request_id="ok"), Request((5,) * 300, 4, request_id="long")])

    asyncio.run(go())
    wait_for(lambda: not bridge.engine.has_work and not bridge._cancelling, 5, "the first request to be dropped")
    assert bridge.engine.pop_result("ok") is None and not bridge._subs


def test_a_failing_step_ends_its_requests_with_500_and_a_fresh_engine_serves_on(bridge):
    original = SlowBackend.decode

    def broken(self, *a):
        SlowBackend.decode = original
        raise RuntimeError("device lost\nsecond line")

    async def go():
        SlowBackend.decode = broken
        sub = await bridge.submit([Request((5, 9), 6, ignore_eos=True)])
        failed = [i for i in await asyncio.wait_for(drain(sub), 10) if isinstance(i, Failed)]
        assert failed == [Failed("the engine failed: device lost", 500)]
        sub = await bridge.submit([Request((5, 9), 6, ignore_eos=True)])
        return await asyncio.wait_for(drain(sub), 10)

    try:
        assert isinstance(asyncio.run(go())[-1], Done)
    finally:
        SlowBackend.decode = original


def test_after_drain_new_requests_are_unavailable(bridge):
    bridge.drain(5)

    async def go():
        with pytest.raises(Unavailable, match="shutting down"):
            await bridge.submit([Request((5,), 2)])

    asyncio.run(go())


def test_the_servers_speedup_is_the_default_schedule(tmp_path):
    b = EngineBridge(ServeConfig(str(tmp_path), speedup=2), fake_loader())
    b.start()
    try:
        assert b.wait_loaded(30)
        s = b.default_schedule
        assert not s.is_full and s.speedup == pytest.approx(2, rel=0.1)
        assert b.schedule_for() is s and b.schedule_for(speedup=1).is_full
        assert b.schedule_for(speedup=3) is b.schedule_for(speedup=3)  # solved once
    finally:
        b.stop(timeout=1)
