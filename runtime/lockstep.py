"""Two backends in lockstep, teacher-forced on the first one's greedy tokens: how an export is
validated against the PyTorch reference and a quantized export against its fp32 source.

Both run on the engine (one generation loop); each step is scheduled and executed on both, then
both are updated with the reference's argmax, so their logits are compared on the same inputs.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from skipdecode.runtime.backend import Backend
from skipdecode.runtime.engine import Engine, EngineConfig
from skipdecode.runtime.request import Request
from skipdecode.schedule import Schedule


def lockstep(ref: Backend, other: Backend, prompts: Sequence[Sequence[int]], schedule: Schedule,
             new_tokens: int, pad_id: int = 0) -> Iterator[tuple[tuple[int, ...], np.ndarray, np.ndarray]]:
    """Yield (layers run, ref logits (B, V), other logits (B, V)) for the prefill and then for
    ``new_tokens - 1`` decode steps, rows in prompt order, both fed the reference's greedy token."""
    B = len(prompts)
    max_len = max(len(p) for p in prompts) + new_tokens
    config = EngineConfig(B, max_len, prefill_padding=float("inf"))  # one prefill call, rows in prompt order
    engines = [Engine(b, (), pad_id, config, schedule) for b in (ref, other)]
    for e in engines:
        for p in prompts:
            e.add(Request(p, new_tokens, schedule, ignore_eos=True))
    for _ in range(new_tokens):
        plans = [e.schedule() for e in engines]
        outs = [e.execute(p) for p, e in zip(plans, engines)]
        p = plans[0]
        if p.prefill is not None:
            layers, lr, lo = p.prefill.layers, outs[0][0], outs[1][0]
        else:
            layers, lr, lo = p.decode.layer_sets[0], outs[0][1], outs[1][1]
        yield tuple(layers), lr, lo
        tokens = lr.argmax(-1)
        for e, plan, out in zip(engines, plans, outs):
            e.update(plan, *out, tokens=tokens)
