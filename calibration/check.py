"""How far a quantized export drifts from its fp32 source: teacher-forced greedy agreement.

Both exports are fed the same tokens (the fp32 export's own greedy continuation), so one early
disagreement does not derail every later step as it would in free-running generation: each step
asks "would the quantized model emit the fp32 model's token here?", and how far its next-token
distribution is from fp32's (mean KL, calibration/divergence.py, which scores whole prompt sets
pairwise). Imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from skipdecode.calibration.divergence import kl_rows
from skipdecode.runtime.lockstep import lockstep
from skipdecode.schedule import Schedule


def teacher_forced(ref, quant, prompts: Sequence[Sequence[int]], schedule: Schedule, new_tokens: int) -> dict:
    """Run both backends over one batch; the reference's greedy token feeds both at every step."""
    agree, diffs, scale, kl = [], [], [], []
    for _, lr, lq in lockstep(ref, quant, prompts, schedule, new_tokens):
        agree.append(lq.argmax(-1) == lr.argmax(-1))
        kl.append(kl_rows(lr, lq))
        diffs.append(np.abs(lq - lr).max(-1))
        scale.append(np.abs(lr).max(-1))
    agree_a, diff_a, scale_a = np.array(agree), np.array(diffs), np.array(scale)  # (N, B)
    return {"steps": int(agree_a.size), "top1_agreement": round(float(agree_a.mean()), 4),
            "first_token_agreement": round(float(agree_a[0].mean()), 4),
            "mean_kl": round(float(np.mean(kl)), 6),
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
    mean = lambda k, digits=4: round(sum(p[k] * p["steps"] for p in parts) / steps, digits)  # noqa: E731
    return {"prompts": len(prompts), "new_tokens": new_tokens, "schedule": schedule.describe(), "steps": steps,
            "top1_agreement": mean("top1_agreement"), "first_token_agreement": mean("first_token_agreement"),
            "mean_kl": mean("mean_kl", 6),
            "max_abs_logit_diff": max(p["max_abs_logit_diff"] for p in parts),
            "mean_max_abs_logit_diff": mean("mean_max_abs_logit_diff"),
            "max_rel_logit_diff": max(p["max_rel_logit_diff"] for p in parts)}
