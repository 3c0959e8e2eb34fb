"""How far a quantized export drifts from its fp32 source: teacher-forced greedy agreement.

Both exports are fed the same tokens (the fp32 export's own greedy continuation), so one early
disagreement does not derail every later step as it would in free-running generation: each step
asks "would the quantized model emit the fp32 model's token here?". Imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from skipdecode.runtime.generate import left_pad
from skipdecode.schedule import Schedule


def teacher_forced(ref, quant, prompts: Sequence[Sequence[int]], schedule: Schedule, new_tokens: int) -> dict:
    """Run both backends over one batch; the reference's greedy token feeds both at every step."""
    ids, mask = left_pad(prompts, 0)
    B, P = ids.shape
    for b in (ref, quant):
        b.allocate(B, P + new_tokens)
    key_mask = np.zeros((B, P + new_tokens), bool)
    key_mask[:, :P] = mask
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    all_layers = tuple(range(ref.num_layers))
    lr = ref.forward(ids, positions, key_mask[:, :P], 0, all_layers)  # (B, V)
    lq = quant.forward(ids, positions, key_mask[:, :P], 0, all_layers)
    agree, diffs, scale = [], [], []
    pos = positions[:, -1] + 1
    for t in range(new_tokens):
        tok = lr.argmax(-1)  # (B,)
        agree.append(lq.argmax(-1) == tok)
        diffs.append(np.abs(lq - lr).max(-1))
        scale.append(np.abs(lr).max(-1))
        if t == new_tokens - 1:
            break
        slot = P + t
        key_mask[:, slot] = True
        layers = schedule.layers_for_step(t)
        lr = ref.forward(tok[:, None], pos[:, None], key_mask[:, :slot + 1], slot, layers)
        lq = quant.forward(tok[:, None], pos[:, None], key_mask[:, :slot + 1], slot, layers)
        pos = pos + 1
    agree_a, diff_a, scale_a = np.array(agree), np.array(diffs), np.array(scale)  # (N, B)
    return {"steps": int(agree_a.size), "top1_agreement": round(float(agree_a.mean()), 4),
            "first_token_agreement": round(float(agree_a[0].mean()), 4),
            "max_abs_logit_diff": round(float(diff_a.max()), 5),
            "mean_max_abs_logit_diff": round(float(diff_a.mean()), 5),
            "max_rel_logit_diff": round(float((diff_a / np.maximum(scale_a, 1e-9)).max()), 5)}


def agreement(fp32_dir: str | Path, quant_dir: str | Path, prompts: Sequence[Sequence[int]], schedule: Schedule,
              new_tokens: int = 16, threads: int | None = None, batch_size: int = 8) -> dict:
    """Teacher-forced greedy agreement of ``quant_dir`` with ``fp32_dir`` over ``prompts``."""
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

    ref, quant = OnnxRuntimeBackend(fp32_dir, threads=threads), OnnxRuntimeBackend(quant_dir, threads=threads)
    parts = [teacher_forced(ref, quant, prompts[i:i + batch_size], schedule, new_tokens)
             for i in range(0, len(prompts), batch_size)]
    steps = sum(p["steps"] for p in parts)
    mean = lambda k: round(sum(p[k] * p["steps"] for p in parts) / steps, 4)  # noqa: E731
    return {"prompts": len(prompts), "new_tokens": new_tokens, "schedule": schedule.describe(), "steps": steps,
            "top1_agreement": mean("top1_agreement"), "first_token_agreement": mean("first_token_agreement"),
            "max_abs_logit_diff": max(p["max_abs_logit_diff"] for p in parts),
            "mean_max_abs_logit_diff": mean("mean_max_abs_logit_diff"),
            "max_rel_logit_diff": max(p["max_rel_logit_diff"] for p in parts)}
