"""The continuous-batching engine (runtime/engine.py) on a numpy fake backend: every request's
output under continuous batching equals the request alone and the definition, each layer runs
exactly the rows whose schedule step includes it, each prefill exactly its requests' prompt layer
set, and KV is never recomputed, in any drop order and at any prompt depth."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake import FakeBackend, reference
from tiny import run_without_torch

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.engine import Engine, EngineConfig, QueueFull
from skipdecode.runtime.request import Request
from skipdecode.runtime.sampling import SamplingConfig
from skipdecode.schedule import Schedule

L = 6
SCHEDULES = [Schedule.full(L), Schedule(L, 5, 2, window=6), Schedule.for_speedup(L, 2, window=4),
             Schedule.constant(L, 3), Schedule(L, 4, 1, window=9, decay="power")]
CUSTOM = dict(drop_order=(5, 2, 4, 3, 1))  # keeps 0, 1, 3, 4, 2, 5: the same nesting as warm-up 2 below
FAMILIES = {  # each list shares one nested family of layer sets, so its requests share batches
    "paper": SCHEDULES + [Schedule(L, 5, 2, window=6, prompt_layers=5), Schedule.constant(L, 3, prompt_layers=4)],
    "even": [Schedule.full(L), Schedule(L, 5, 2, window=6, drop_order="even"),
             Schedule.constant(L, 3, drop_order="even", prompt_layers=3),
             Schedule(L, 4, 1, window=9, decay="power", drop_order="even", prompt_layers=1)],
    "custom": [Schedule(L, 5, 2, window=6, **CUSTOM), Schedule.constant(L, 2, prompt_layers=4, **CUSTOM),
               Schedule(L, 4, 2, window=5, warmup_layers=2, drop_order=(5, 2, 4, 3), prompt_layers=5),
               Schedule.full(L)],
}


def engine(rows=4, policy="continuous", **kw):
    return Engine(FakeBackend(L), eos_ids=[2], config=EngineConfig(max_rows=rows, policy=policy, **kw))


def drive(eng, arrivals, check_rows=True):
    """Add each request at its arrival step; step until done. Checks at every decode that layer l
    ran exactly the rows whose own step t includes l. Returns results by request id."""
    pending = sorted(arrivals, key=lambda a: a[0])
    fed: dict[str, int] = {}
    results = {}
    step = 0
    while pending or eng.has_work:
        while pending and pending[0][0] <= step:
            eng.add(pending.pop(0)[1])
        plan = eng.schedule()
        if check_rows and plan.decode is not None:
            expect = [r.schedule.layers_for_step(fed[r.id]) for r in plan.decode.requests]
        before = len(eng.backend.calls)
        lp, ld = eng.execute(plan)
        if plan.prefill is not None:  # one prompt layer set per prefill: each of its requests' own
            p = plan.prefill
            calls = [c for c in eng.backend.calls[before:] if c[0] == "prefill"]
            assert all(c[2] == r.schedule.prompt_layer_set() for c in calls for r in p.requests)
            # the calls tile the prefill's rows; each is padded within the slack (or holds one prompt)
            assert [c[1] for c in calls] == [(a, a + len(n)) for a, _, n in p.calls()]
            assert calls[0][1][0] == p.start and calls[-1][1][1] == p.start + len(p.requests)
            slack = eng.config.prefill_padding if eng.config.policy == "continuous" else float("inf")
            for _, ids, n in p.calls():
                assert len(n) == 1 or ids.shape[1] * len(n) <= (1 + slack) * n.sum(), (ids.shape, n)
        if check_rows and plan.decode is not None:
            ranges = eng.backend.calls[-1][1]
            for l, (a, b) in enumerate(ranges):
                assert set(range(a, b)) == {i for i, s in enumerate(expect) if l in s}, (l, ranges, expect)
            for r in plan.decode.requests:
                fed[r.id] += 1
        if plan.prefill is not None:
            for r in plan.prefill.requests:
                fed[r.id] = 0
        eng.update(plan, lp, ld)
        for rid in list(fed):
            res = eng.pop_result(rid)
            if res is not None:
                results[rid] = res
        step += 1
        assert step < 2000
    return results


def alone(req):
    return Engine(FakeBackend(L), eos_ids=[2], config=EngineConfig(max_rows=1)).run([req])[0]


def test_alone_equals_the_definition():
    for s in [s for family in FAMILIES.values() for s in family]:
        for prompt in ([5, 9, 14, 3], [7], [11, 4, 19, 20, 8, 3, 3]):
            got = alone(Request(prompt, 12, s, ignore_eos=True))
            assert got.token_ids == reference(prompt, s, 12, ignore_eos=True)
            assert got.mean_layers == pytest.approx(s.mean_layers(12))


def arrivals_st(max_size):
    """(arrival step, request) lists whose schedules come from one family."""
    def of(family):
        return st.lists(st.builds(
            lambda prompt, n, s, eos, at: (at, Request(prompt, n, family[s], ignore_eos=not eos)),
            st.lists(st.integers(3, 23), min_size=1, max_size=10), st.integers(1, 16),
            st.integers(0, len(family) - 1), st.booleans(), st.integers(0, 25)), min_size=1, max_size=max_size)
    return st.sampled_from(list(FAMILIES.values())).flatmap(of)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrivals_st(9), st.integers(1, 5), st.sampled_from([0.0, 0.25, float("inf")]))
def test_continuous_batching_equals_alone(arrivals, rows, padding):
    results = drive(engine(rows, prefill_padding=padding), arrivals)
    assert len(results) == len(arrivals)
    for _, req in arrivals:
        got = results[req.request_id]
        want = reference(req.prompt_ids, req.schedule, req.max_new_tokens, eos=(2,), ignore_eos=req.ignore_eos)
        assert got.token_ids == want
        assert got.finish_reason == ("eos" if want[-1] == 2 and not req.ignore_eos else "length")


@settings(max_examples=40, deadline=None)
@given(arrivals_st(7), st.integers(1, 4))
def test_static_policy_equals_alone(arrivals, rows):
    results = drive(engine(rows, "static"), arrivals, check_rows=False)
    for _, req in arrivals:
        assert results[req.request_id].token_ids == reference(req.prompt_ids, req.schedule, req.max_new_tokens,
                                                              ignore_eos=req.ignore_eos)


def test_rows_are_reused_and_a_full_engine_makes_requests_wait():
    eng = engine(rows=2)
    reqs = [Request([5 + i, 7], 5, SCHEDULES[1], ignore_eos=True) for i in range(5)]
    for r in reqs:
        eng.add(r)
    eng.step()
    assert eng.num_running == 2 and eng.num_waiting == 3
    prefills = []
    while eng.has_work:
        eng.step()
        assert eng.num_running <= 2
        if eng.last_plan.prefill:
            prefills.append(eng.last_plan.prefill.start)
    assert prefills and all(0 <= s < 2 for s in prefills)  # newcomers reuse the freed rows
    for r in reqs:
        assert eng.pop_result(r.request_id).token_ids == reference(r.prompt_ids, r.schedule, 5, ignore_eos=True)


def test_too_long_a_request_is_refused_when_added_and_the_queue_is_bounded():
    eng = engine(rows=1, max_len=20, max_waiting=2)
    with pytest.raises(SkipDecodeError, match="above the 20 of a KV row"):
        eng.add(Request([5] * 15, 6))
    eng.add(Request([5], 3))
    eng.add(Request([6], 3))
    with pytest.raises(QueueFull):
        eng.add(Request([7], 3))
    with pytest.raises(SkipDecodeError, match="empty prompt"):
        eng.add(Request([], 3))
    with pytest.raises(SkipDecodeError, match="schedule is for 4 layers"):
        eng.add(Request([5], 3, Schedule.full(4)))
    with pytest.raises(SkipDecodeError, match="warm-up layers"):
        Engine(FakeBackend(L), schedule=Schedule(L, 4, 2, 4, warmup_layers=1)).add(
            Request([5], 3, Schedule(L, 4, 2, 4, warmup_layers=2)))


def test_schedules_of_different_drop_orders_never_share_a_batch():
    paper, even = FAMILIES["paper"][1], FAMILIES["even"][1]
    with pytest.raises(SkipDecodeError, match="warm-up layers and drop order"):
        Engine(FakeBackend(L), schedule=paper).add(Request([5], 3, even))
    eng = Engine(FakeBackend(L), eos_ids=[2], config=EngineConfig(max_rows=4))  # a full-depth default
    eng.add(Request([5], 3, even, ignore_eos=True))
    with pytest.raises(SkipDecodeError, match="drop order"):  # even is in the engine (waiting)
        eng.add(Request([5], 3, paper))
    eng.add(Request([6], 3, Schedule.full(L)))  # full depth nests with every order
    eng.add(Request([7], 3, Schedule.constant(L, 2, drop_order="even")))
    while eng.has_work:
        eng.step()
    assert eng.validate(paper) is paper  # validate checks the default only; add checks the requests too
    eng.add(Request([5], 3, paper))  # once the even rows have left, another order may come in
    with pytest.raises(SkipDecodeError, match="drop order"):
        eng.add(Request([5], 3, even))
    custom = FAMILIES["custom"]
    assert Engine(FakeBackend(L), schedule=custom[0]).validate(custom[2]) is custom[2]  # warm-up 1 and 2, one nesting


def test_a_prefill_admits_only_newcomers_of_the_first_ones_prompt_layers():
    shallow = Schedule(L, 4, 2, window=4, prompt_layers=4)
    deep = Schedule(L, 4, 2, window=4)
    reqs = [Request([5, 8], 6, shallow, ignore_eos=True), Request([6, 9, 3], 6, deep, ignore_eos=True),
            Request([7], 6, shallow, ignore_eos=True), Request([4, 4], 6, deep, ignore_eos=True)]
    eng = engine(rows=4)
    for r in reqs:
        eng.add(r)
    prefills = []
    while eng.has_work:
        eng.step()
        if eng.last_plan.prefill is not None:
            p = eng.last_plan.prefill
            prefills.append(([r.id for r in p.requests], p.layers))
    ids = [r.request_id for r in reqs]
    assert prefills == [([ids[2], ids[0]], (0, 3, 4, 5)), ([ids[3], ids[1]], tuple(range(L)))]  # short first
    for r in reqs:
        assert eng.pop_result(r.request_id).token_ids == reference(r.prompt_ids, r.schedule, 6, ignore_eos=True)


def test_a_burst_of_mixed_lengths_is_prefilled_in_calls_padded_to_their_own_longest():
    s = Schedule.full(L)
    lengths = [20, 3, 21, 4, 3]
    reqs = [Request(list(range(5, 5 + n)), 4, s, ignore_eos=True) for n in lengths]
    eng = engine(rows=5)
    for r in reqs:
        eng.add(r)
    eng.step()
    p = eng.last_plan.prefill
    assert [len(r.request.prompt_ids) for r in p.requests] == [3, 3, 4, 20, 21]  # sorted: rows 0-4
    assert [(a, ids.shape) for a, ids, _ in p.calls()] == [(0, (3, 4)), (3, (2, 21))]
    assert [c[1] for c in eng.backend.calls if c[0] == "prefill"] == [(0, 3), (3, 5)]
    while eng.has_work:
        eng.step()
    for r in reqs:
        assert eng.pop_result(r.request_id).token_ids == reference(r.prompt_ids, s, 4, ignore_eos=True)
    one = engine(rows=5, prefill_padding=float("inf"))  # one padded call, as the static batcher makes
    for r in reqs:
        one.add(Request(r.prompt_ids, 4, s, ignore_eos=True))
    one.step()
    assert [c[1] for c in one.backend.calls if c[0] == "prefill"] == [(0, 5)]


def test_cancelling_frees_the_row():
    eng = engine(rows=1)
    a = eng.add(Request([5, 6], 50, ignore_eos=True))
    b = eng.add(Request([7], 4, SCHEDULES[1], ignore_eos=True))
    eng.step(), eng.step()
    assert eng.num_running == 1 and eng.num_waiting == 1
    assert eng.cancel(a)
    eng.step()  # the cancelled row leaves, b takes its row
    assert eng.pop_result(a).finish_reason == "cancelled"
    assert eng.last_plan.prefill.start == 0 and eng.last_plan.prefill.requests[0].id == b
    while eng.has_work:
        eng.step()
    assert eng.pop_result(b).token_ids == reference([7], SCHEDULES[1], 4, ignore_eos=True)
    assert not eng.cancel(b)


def test_seeded_sampling_does_not_depend_on_the_batch():
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, seed=7)
    req = lambda: Request([5, 9, 4], 12, SCHEDULES[1], sampling=sampling, ignore_eos=True)  # noqa: E731
    solo = alone(req()).token_ids
    eng = engine(rows=4)
    others = [Request([3 + i], 12, SCHEDULES[i % 3], sampling=SamplingConfig(temperature=1.0), ignore_eos=True)
              for i in range(3)]
    mine = req()
    results = eng.run([others[0], mine, *others[1:]])
    assert results[1].token_ids == solo
    assert solo != reference([5, 9, 4], SCHEDULES[1], 12, ignore_eos=True)  # it really sampled


class Letters:
    """Token i decodes to one letter; 2 (EOS) to nothing."""

    def decode(self, ids):
        return "".join("" if i == 2 else chr(ord("a") + i % 26) for i in ids)


def test_stop_strings_are_matched_incrementally_and_cut():
    want = reference([5, 9], SCHEDULES[0], 20, ignore_eos=True)
    text = Letters().decode(want)
    stop = text[5:7]
    eng = Engine(FakeBackend(L), eos_ids=[2], tokenizer=Letters())
    res = eng.run([Request([5, 9], 20, stop=(stop,), ignore_eos=True)])[0]
    assert res.finish_reason == "stop" and res.text == text[: text.index(stop)]
    assert res.token_ids == want[: len(res.token_ids)]
    streamed = Engine(FakeBackend(L), eos_ids=[2], tokenizer=Letters())
    streamed.add(Request([5, 9], 20, stop=(stop,), ignore_eos=True))
    pieces = []
    while streamed.has_work:
        pieces += [e.text for e in streamed.step()]
    assert "".join(pieces) == res.text


def test_mixed_speedups_share_a_batch_and_rows_move_only_between_depth_groups():
    eng = engine(rows=6)
    reqs = [Request([4 + i, 9], 10 + 3 * i, SCHEDULES[i % len(SCHEDULES)], ignore_eos=True) for i in range(6)]
    results = eng.run(reqs)
    for r, got in zip(reqs, results):
        assert got.token_ids == reference(r.prompt_ids, r.schedule, r.max_new_tokens, ignore_eos=True)
    moves = [c for c in eng.backend.calls if c[0] == "move"]
    decodes = [c for c in eng.backend.calls if c[0] == "decode"]
    assert moves and len(moves) < len(decodes)


def test_engine_imports_neither_torch_nor_transformers():
    proc = run_without_torch(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from fake import FakeBackend, reference
        from skipdecode.runtime.engine import Engine, EngineConfig
        from skipdecode.runtime.request import Request
        from skipdecode.schedule import Schedule
        s = Schedule(6, 5, 2, window=6)
        out = Engine(FakeBackend(6), [2], config=EngineConfig(max_rows=2)).run(
            [Request([5, 9], 8, s, ignore_eos=True), Request([7], 5, ignore_eos=True)])
        assert out[0].token_ids == reference([5, 9], s, 8, ignore_eos=True)
    """))
    assert proc.returncode == 0, proc.stderr[-2000:]
