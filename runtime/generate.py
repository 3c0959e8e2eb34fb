"""The generation loop shared by every backend: batching, prefill, skip decoding, stopping.

Prompts are left-padded so every row's generated token t sits at the same cache slot, and all
rows run the same layers at the same step (``schedule.layers_for_step(t)``). RoPE/learned
positions are per row, from the padding mask; cache slots are shared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.backend import Backend
from skipdecode.runtime.sampling import SamplingConfig, sample
from skipdecode.schedule import Schedule


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends at the first one, which is cut from the text."""
    ignore_eos: bool = False
    """Benchmarks generate exactly max_new_tokens."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class RowResult:
    prompt_ids: list[int]
    token_ids: list[int]
    """Generated ids, without the prompt; EOS included when it ended the row."""
    finish_reason: str  # "eos" | "stop" | "length"
    mean_layers: float
    """Mean n_t over the generated tokens (token t runs n_t layers)."""
    text: str = ""
    prompt: str | None = None
    prefill_s: float = 0.0
    """This row's share of its batch's prefill wall time (the batch's seconds / its rows): summed
    over rows, the prompt processing, so decode-only speed is tokens / (wall - prefill)."""

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class StepEvent:
    """One decoding step of a batch: the new token of each still-active row."""

    step: int
    rows: list[int]
    token_ids: list[int]


def check_fits(backend: Backend, prompt_len: int, max_new_tokens: int) -> None:
    need = prompt_len + max_new_tokens
    if need > backend.max_positions:
        raise SkipDecodeError(
            f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens = {need} positions, "
            f"above the model's {backend.max_positions}"
        )


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """-> ids (B, P) int64, mask (B, P) bool."""
    P = max(len(p) for p in prompts)
    ids = np.full((len(prompts), P), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), P), dtype=bool)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, P - len(p):] = p
            mask[i, P - len(p):] = True
    return ids, mask


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Per-row positions (B, S) int64 from a left-padding mask: 0 at each row's first real token."""
    return np.maximum(mask.cumsum(-1) - 1, 0)


def stream_batch(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    schedule: Schedule,
    config: GenerationConfig,
    eos_ids: Sequence[int],
    pad_id: int,
    stop_check=None,
    rng: np.random.Generator | None = None,
) -> Iterator[StepEvent | list[RowResult]]:
    """Yield a StepEvent per step, then the list of RowResults (same order as ``prompts``).

    ``stop_check(row, token_ids) -> bool`` ends a row early (stop strings).
    """
    if any(len(p) == 0 for p in prompts):
        raise SkipDecodeError("empty prompt: every prompt needs at least one token")
    if schedule.num_layers != backend.num_layers:
        raise SkipDecodeError(f"schedule is for {schedule.num_layers} layers, the model has {backend.num_layers}")
    rng = rng or np.random.default_rng(config.sampling.seed)
    ids, mask = left_pad(prompts, pad_id)
    B, P = ids.shape
    N = config.max_new_tokens
    check_fits(backend, int(mask.sum(1).max()), N)
    backend.allocate(B, P + N)
    key_mask = np.zeros((B, P + N), dtype=bool)
    key_mask[:, :P] = mask
    positions = positions_from_mask(mask)  # (B, P)
    all_layers = tuple(range(backend.num_layers))
    t0 = time.perf_counter()
    logits = backend.forward(ids, positions, key_mask[:, :P], 0, all_layers)  # (B, V)
    prefill_s = time.perf_counter() - t0
    next_pos = positions[:, -1] + 1  # (B,)
    out: list[list[int]] = [[] for _ in range(B)]
    reason = ["length"] * B
    active = np.ones(B, dtype=bool)
    eos = np.asarray(list(eos_ids) or [-1])
    for t in range(N):
        tok = sample(logits, config.sampling, rng).astype(np.int64)  # (B,)
        rows = np.flatnonzero(active)
        for r in rows:
            out[r].append(int(tok[r]))
            if not config.ignore_eos and tok[r] in eos:
                active[r], reason[r] = False, "eos"
            elif stop_check is not None and stop_check(r, out[r]):
                active[r], reason[r] = False, "stop"
        yield StepEvent(t, rows.tolist(), [int(tok[r]) for r in rows])
        if not active.any() or t == N - 1:
            break
        tok[~active] = pad_id
        slot = P + t
        key_mask[:, slot] = True
        logits = backend.forward(tok[:, None], next_pos[:, None], key_mask[:, :slot + 1], slot,
                                 schedule.layers_for_step(t))
        next_pos = next_pos + 1
    yield [
        RowResult(list(prompts[i]), out[i], reason[i], schedule.mean_layers(len(out[i])), prefill_s=prefill_s / B)
        for i in range(B)
    ]


def length_batches(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices in the batches ``generate_ids`` runs: sorted by length (stable), then cut."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def generate_ids(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    schedule: Schedule,
    config: GenerationConfig,
    eos_ids: Sequence[int],
    pad_id: int,
    batch_size: int = 8,
    stop_check=None,
    progress=None,
) -> list[RowResult]:
    """Generate for every prompt, ``batch_size`` at a time; results in input order.

    Prompts are batched by length (less padding); ``progress(n)`` is called per finished batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[RowResult | None] = [None] * len(prompts)
    rng = np.random.default_rng(config.sampling.seed)
    for idx in length_batches(prompts, batch_size):
        check = None if stop_check is None else (lambda r, toks, idx=idx: stop_check(idx[r], toks))
        *_, rows = stream_batch(backend, [prompts[i] for i in idx], schedule, config, eos_ids, pad_id, check, rng)
        for i, row in zip(idx, rows):
            results[i] = row
        if progress is not None:
            progress(len(idx))
    return results  # type: ignore[return-value]
