"""Helpers of the training tests: trainable tiny models (HF's small init, not the large random
weights of the parity tests) and tiny data files over the word-level test vocabulary ("w3 w4 ...")."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch

from tiny import TINY_LLAMA, TINY_QWEN2, write_tokenizer  # tests/tiny.py

TRAIN_LLAMA = dict(TINY_LLAMA, hidden_size=64, intermediate_size=128)
TRAIN_QWEN2 = dict(TINY_QWEN2, hidden_size=64, intermediate_size=128)


def make_trainable(config: dict, path: Path, seed: int = 0) -> Path:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
    cfg.architectures = config["architectures"]
    model = getattr(transformers, config["architectures"][0])(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    write_tokenizer(path, cfg.vocab_size)
    return path


def e2e_rows(n: int = 16, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (mr, ref) pairs: distinct 3-word prompts, 4-8 word targets, all from the vocabulary."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        mr = f"w{3 + i} w{40 + i % 7} w{60 + i % 5}"
        ref = " ".join(f"w{rng.randrange(3, 96)}" for _ in range(rng.randrange(4, 9)))
        rows.append((mr, ref))
    return rows


def write_e2e(path: Path, rows, header=("mr", "ref")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
