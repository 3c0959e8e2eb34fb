"""How far a quantized export's next-token distributions drift from its fp32 source: KL divergence.

Generated-text metrics see a quantization error only when it flips a greedy token and the flip
changes the words; two int8 exports that lose half a ROUGE-L point each cannot be told apart on
630 inputs. ``KL(p_fp32 || p_quant)`` sees every error at every step (llama.cpp's
``--kl-divergence`` measures the same). Both exports are teacher-forced on the fp32 export's greedy
continuation (``runtime/lockstep.py``) under the deployment schedule, so the quantized one sees
the hidden states skip decoding really produces; each prompt is scored up to and including the
fp32 export's first end-of-sequence token (what generation would have emitted).

Scores are per prompt (the mean over its steps), so two exports checked against the same fp32
export on the same prompts pair up: ``paired`` gives the difference with a 95% paired-bootstrap
interval over the prompts. Imports no torch.

>>> lr = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
>>> kl_rows(lr, np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))).round(4).tolist()
[0.0, 0.3681]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from skipdecode.runtime.lockstep import lockstep
from skipdecode.schedule import Schedule


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_rows(ref_logits: np.ndarray, other_logits: np.ndarray) -> np.ndarray:
    """``KL(softmax(ref) || softmax(other))`` per row, in nats: (B, V), (B, V) -> (B,)."""
    lp, lq = log_softmax(ref_logits), log_softmax(other_logits)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(-1), 0.0)  # rounding can dip a hair below 0


def prompt_divergence(ref, other, prompts: Sequence[Sequence[int]], schedule: Schedule, new_tokens: int,
                      eos_ids: Sequence[int], batch_size: int = 8, progress=None) -> list[dict]:
    """Per prompt, in order: {"tokens": steps scored, "kl": mean KL (nats), "top1": share of
    steps where ``other``'s greedy token is ``ref``'s, "kl_steps": each step's KL (step 0 is the
    prefill's prediction, step t + 1 decode step t of the schedule)}."""
    rows = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i:i + batch_size]
        kl, agree = [], []  # per step: (B,), NaN / False once a row has ended
        live = np.ones(len(batch), bool)
        for _, lr, lq in lockstep(ref, other, batch, schedule, new_tokens):
            top = lr.argmax(-1)  # (B,)
            kl.append(np.where(live, kl_rows(lr, lq), np.nan))
            agree.append(live & (lq.argmax(-1) == top))
            live &= ~np.isin(top, eos_ids)
            if not live.any():
                break
        kl_a, agree_a = np.array(kl), np.array(agree)  # (steps, B)
        for b in range(len(batch)):
            k = kl_a[:, b][~np.isnan(kl_a[:, b])]
            rows.append({"tokens": len(k), "kl": float(k.mean()), "top1": float(agree_a[:len(k), b].mean()),
                         "kl_steps": [round(float(x), 7) for x in k]})
        if progress:
            progress(len(batch))
    return rows


def summary(rows: list[dict]) -> dict:
    """Means over prompts (each prompt weighs the same, as in the paired bootstrap), tokens summed;
    ``kl_by_step``: the mean KL at each step over the prompts still going."""
    steps = max(r["tokens"] for r in rows)
    by_step = [float(np.mean([r["kl_steps"][t] for r in rows if r["tokens"] > t])) for t in range(steps)]
    return {"prompts": len(rows), "tokens": sum(r["tokens"] for r in rows),
            "mean_kl": float(np.mean([r["kl"] for r in rows])),
            "top1_agreement": float(np.mean([r["top1"] for r in rows])), "kl_by_step": by_step}


def paired(a: list[dict], b: list[dict], inputs: Sequence[str], metric: str = "kl") -> tuple[float, float, float]:
    """``metric`` of ``a`` minus ``b`` over the same prompts, with a 95% paired-bootstrap interval."""
    from skipdecode.evaluation.compare import paired_bootstrap

    def tag(rows):
        return [{"input": s, metric: r[metric]} for s, r in zip(inputs, rows, strict=True)]

    return paired_bootstrap(tag(a), tag(b), metric)
