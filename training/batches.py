"""Training batches: examples (skipdecode/data.py) to token ids, padded batches and a resumable
order of batches.

>>> batch = collate([([5, 6], [7, 2]), ([4], [8, 9, 2])], pad_id=0)
>>> batch.prompt_len, batch.input_ids.tolist()
(2, [[5, 6, 7, 2, 0], [0, 4, 8, 9, 2]])
>>> batch.labels.tolist()
[[-100, -100, 7, 2, -100], [-100, -100, 8, 9, 2]]
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from skipdecode.data import Example
from skipdecode.errors import SkipDecodeError

IGNORE_INDEX = -100  # the label of positions without loss (HF convention)


# ---- tokens -----------------------------------------------------------------------------------
def tokenize(examples: Sequence[Example], tokenizer, max_length: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """-> ([(prompt_ids, target_ids + [eos])], number dropped for exceeding ``max_length``).

    Prompt and target are encoded separately, as the runtime encodes the prompt alone."""
    if not tokenizer.eos_ids:
        raise SkipDecodeError("the tokenizer has no EOS token (generation_config.json eos_token_id)")
    eos = tokenizer.eos_ids[0]
    out, dropped = [], 0
    for e in examples:
        p, t = tokenizer.encode(e.prompt), tokenizer.encode(e.target) + [eos]
        if not p:
            raise SkipDecodeError(f"{e.source}: the prompt encodes to no tokens")
        if len(p) + len(t) > max_length:
            dropped += 1
            continue
        out.append((p, t))
    return out, dropped


@dataclass
class Batch:
    input_ids: "object"  # torch.LongTensor (B, T)
    attention_mask: "object"  # torch.BoolTensor (B, T)
    labels: "object"  # torch.LongTensor (B, T), IGNORE_INDEX off-target
    prompt_len: int
    """Column of every row's first target token (prompts left-padded to it)."""
    num_tokens: int
    """Real (non-pad) tokens in the batch."""
    num_targets: int
    """Target tokens that carry loss."""

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                     self.prompt_len, self.num_tokens, self.num_targets)


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Left-pad prompts and right-pad targets, so column ``prompt_len`` starts every target."""
    import torch

    P = max(len(p) for p, _ in pairs)
    N = max(len(t) for _, t in pairs)
    ids = torch.full((len(pairs), P + N), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(pairs), P + N), dtype=torch.bool)
    labels = torch.full((len(pairs), P + N), IGNORE_INDEX, dtype=torch.long)
    for i, (p, t) in enumerate(pairs):
        ids[i, P - len(p):P] = torch.tensor(p)
        ids[i, P:P + len(t)] = torch.tensor(t)
        mask[i, P - len(p):P + len(t)] = True
        labels[i, P:P + len(t)] = torch.tensor(t)
    return Batch(ids, mask, labels, P, int(mask.sum()), sum(len(t) for _, t in pairs))


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, pool: int = 50) -> list[list[int]]:
    """Length-bucketed batches of example indices for one epoch, a pure function of its inputs
    (so a resumed run replays the same order): shuffle, sort pools of ``pool`` batches by
    length, cut into batches, shuffle the batches."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    size = batch_size * pool
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class BatchStream:
    """An endless stream of batches over epochs whose position is a small, saveable state."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch, self.index = 0, 0
        self._batches = epoch_batches(self.lengths, batch_size, seed, 0)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._batches)

    def next(self) -> list[int]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch)
        batch = self._batches[self.index]
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch)
