"""Training data: E2E CSV or JSONL to (prompt, target) examples, token ids and padded batches.

The prompt template lives here and nowhere else: evaluation and the runtime must feed the
fine-tuned model exactly the prompts it was trained on, so they import ``format_prompt``.

>>> format_prompt("name[The Eagle], food[Japanese]")
'name[The Eagle], food[Japanese]\\n'
>>> batch = collate([([5, 6], [7, 2]), ([4], [8, 9, 2])], pad_id=0)
>>> batch.prompt_len, batch.input_ids.tolist()
(2, [[5, 6, 7, 2, 0], [0, 4, 8, 9, 2]])
>>> batch.labels.tolist()
[[-100, -100, 7, 2, -100], [-100, -100, 8, 9, 2]]
"""

from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from skipdecode.errors import SkipDecodeError
from skipdecode.io import read_jsonl

IGNORE_INDEX = -100  # the label of positions without loss (HF convention)

E2E_TEMPLATE = "{mr}\n"
"""E2E prompt: the meaning representation, then a newline; the model writes the sentence."""
JSONL_TEMPLATE = "{prompt}"
"""JSONL prompts are used verbatim: the file carries its own formatting."""
FORMATS = ("e2e", "jsonl")


def format_prompt(mr: str) -> str:
    """The E2E prompt for one meaning representation (training, evaluation and serving)."""
    return E2E_TEMPLATE.format(mr=mr)


@dataclass(frozen=True)
class Example:
    prompt: str
    """The formatted prompt, ready to tokenize."""
    target: str
    group: str
    """Examples that must stay on the same side of a train/held-out split (E2E: the MR)."""
    source: str
    """file:line, for error messages."""


# ---- reading ----------------------------------------------------------------------------------
def infer_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "e2e"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise SkipDecodeError(f"{path}: cannot tell the format from the suffix; pass --format e2e|jsonl")


def read_e2e(path: str | Path) -> list[Example]:
    """E2E CSV (columns ``mr``, ``ref``). Rows of clean-devel.csv are grouped by ``orig_mr``, the
    devset MR they were corrected from, so a held-out MR never leaks through its twin file."""
    path = Path(path)
    if not path.is_file():
        raise SkipDecodeError(f"{path}: no such file")
    out = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise SkipDecodeError(f"{path}:1: empty file (expected a header with columns mr, ref)") from None
        except csv.Error as e:
            raise SkipDecodeError(f"{path}:1: malformed CSV ({e})") from None
        for col in ("mr", "ref"):
            if col not in header:
                raise SkipDecodeError(f"{path}:1: missing column {col!r} (E2E files have columns mr, ref)")
        mr_i, ref_i = header.index("mr"), header.index("ref")
        orig_i = header.index("orig_mr") if "orig_mr" in header else None
        line = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise SkipDecodeError(f"{path}:{line}: malformed CSV ({e})") from None
            if row:  # csv skips nothing itself; blank lines come back as []
                cells = {name: (row[i].strip() if i < len(row) else "") for name, i in (("mr", mr_i), ("ref", ref_i))}
                for name, value in cells.items():
                    if not value:
                        raise SkipDecodeError(f"{path}:{line}: missing or empty field {name!r}")
                group = row[orig_i].strip() if orig_i is not None and orig_i < len(row) and row[orig_i].strip() else cells["mr"]
                out.append(Example(format_prompt(cells["mr"]), cells["ref"], group, f"{path}:{line}"))
            line = reader.line_num + 1
    if not out:
        raise SkipDecodeError(f"{path}: no examples")
    return out


def read_jsonl_examples(path: str | Path, prompt_field: str = "prompt", target_field: str = "target") -> list[Example]:
    rows = read_jsonl(path, required=(prompt_field, target_field))
    if not rows:
        raise SkipDecodeError(f"{path}: no examples")
    return [Example(JSONL_TEMPLATE.format(prompt=r[prompt_field]), r[target_field], r[prompt_field], f"{path}")
            for r in rows]


def load_examples(paths: Iterable[str | Path], fmt: str | None = None, prompt_field: str = "prompt",
                  target_field: str = "target") -> list[Example]:
    """Read every file (format from ``fmt`` or each file's suffix), in order."""
    out: list[Example] = []
    for path in paths:
        kind = fmt or infer_format(path)
        if kind == "e2e":
            out += read_e2e(path)
        elif kind == "jsonl":
            out += read_jsonl_examples(path, prompt_field, target_field)
        else:
            raise SkipDecodeError(f"unknown format {kind!r} (supported: {', '.join(FORMATS)})")
    return out


def split_heldout(examples: Sequence[Example], fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Hold out whole groups (E2E: whole MRs): ``round(fraction * groups)`` of them, chosen by a
    seeded hash of the group key, so the split does not depend on file order and is the same on
    every machine. Returns (train, held_out), each in input order."""
    if not 0 <= fraction < 1:
        raise SkipDecodeError(f"held-out fraction must be in [0, 1), got {fraction}")
    groups = sorted({e.group for e in examples}, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n = round(fraction * len(groups))
    if fraction > 0 and n == 0:
        n = 1
    if n >= len(groups) and fraction > 0:
        raise SkipDecodeError(f"cannot hold out {fraction:g} of {len(groups)} prompt groups and keep any to train on")
    held = set(groups[:n])
    return [e for e in examples if e.group not in held], [e for e in examples if e.group in held]


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
