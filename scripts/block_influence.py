"""Block influence per layer on dev data, and the drop order it gives (training/influence.py).

    python scripts/block_influence.py --data /path/to/e2e/devset.csv [--model smollm2-135m]
        [--examples 64] [--batch-size 16] [--warmup-layers 1] [--include-prompt]

Runs the full-depth forward over prompt + reference of ``--examples`` examples and averages
``1 - cos(h_in, h_out)`` per layer over the generated tokens (the ones a schedule skips layers
for; ``--include-prompt`` adds the prompt's). Prints the table and a ``--drop-order`` for
`skipdecode train` (least influential first).
"""

from __future__ import annotations

import argparse
import random
import sys

import torch

from skipdecode.data import load_examples
from skipdecode.models import load_model
from skipdecode.training.batches import collate, tokenize
from skipdecode.training.influence import influence_order, layer_influence


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="E2E CSV or JSONL file (dev data, never the test set)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--warmup-layers", type=int, default=1)
    p.add_argument("--include-prompt", action="store_true", help="average over prompt tokens too")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    loaded = load_model(args.model)
    model = loaded.model.eval()
    examples = load_examples([args.data])
    random.Random(args.seed).shuffle(examples)
    pairs, _ = tokenize(examples[: args.examples], loaded.tokenizer, 10_000)
    sums, count = [0.0] * model.num_layers, 0
    for start in range(0, len(pairs), args.batch_size):
        batch = collate(pairs[start:start + args.batch_size], loaded.tokenizer.pad_id)
        columns = torch.arange(batch.input_ids.shape[1]) >= (0 if args.include_prompt else batch.prompt_len)
        tokens = batch.attention_mask.bool() & columns[None]  # (B, T)
        n = int(tokens.sum())
        for l, v in enumerate(layer_influence(model, batch.input_ids, batch.attention_mask, tokens)):
            sums[l] += v * n
        count += n
    influence = [s / count for s in sums]
    order = influence_order(influence, args.warmup_layers)
    print(f"# block influence 1 - cos(h_in, h_out), {args.model}, {len(pairs)} examples, {count} tokens "
          f"({'all' if args.include_prompt else 'generated'} columns)")
    print("| layer | influence | dropped |")
    print("| --- | --- | --- |")
    rank = {l: i + 1 for i, l in enumerate(order)}
    for l, v in enumerate(influence):
        print(f"| {l} | {v:.4f} | {rank.get(l, 'warm-up')} |")
    print(f"--drop-order {','.join(map(str, order))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
