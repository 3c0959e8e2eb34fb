"""Training step time under skip schedules (forward + backward + AdamW step), same batch each.

    python scripts/bench_train_step.py --data /path/to/e2e/devset.csv [--model smollm2-135m]
        [--speedups 1 3 5] [--batch-size 16] [--repeats 5] [--window 32] [--threads N]

Schedules are timed in interleaved rounds after one warm-up round, so load from other processes
on a shared machine hits them alike; the report gives medians and ratios to 1x measured in the
same run, the share of (layer, column) pairs each schedule computes, and the machine. Besides
wall time it reports the process's CPU time, which other processes' load barely disturbs (with
--threads 1 it is the step's compute time).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time

import torch

from skipdecode.data import load_examples
from skipdecode.models import load_model
from skipdecode.schedule import Schedule
from skipdecode.training.batches import collate, tokenize
from skipdecode.training.evaluate import batch_loss


def layer_share(schedule: Schedule, T: int, P: int) -> float:
    """Fraction of the (layer, column) pairs of a full forward that this schedule computes."""
    if schedule.is_full:
        return 1.0
    L = schedule.num_layers
    return sum(P + schedule.steps_running_layer(layer, T - P) for layer in range(L)) / (L * T)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="E2E CSV or JSONL training file")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--speedups", type=float, nargs="+", default=[1, 3, 5])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is steadier on a busy machine)")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loaded = load_model(args.model)
    model = loaded.model.train()
    L = model.num_layers
    examples = load_examples([args.data])
    random.Random(args.seed).shuffle(examples)
    pairs, _ = tokenize(examples[: args.batch_size], loaded.tokenizer, 10_000)
    batch = collate(pairs, loaded.tokenizer.pad_id)
    B, T = batch.input_ids.shape
    P = batch.prompt_len
    schedules = {s: Schedule.full(L) if s == 1 else Schedule.for_speedup(L, s, args.window) for s in args.speedups}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step(schedule: Schedule, head_all: bool = False) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        if head_all:  # the LM head over every column, as a plain causal-LM trainer would
            _, loss = model(batch.input_ids, batch.attention_mask, labels=batch.labels, schedule=schedule, prompt_len=P)
        else:
            loss, _ = batch_loss(model, batch, schedule)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0, time.process_time() - c0

    variants = [(f"{s:g}x", schedules[s], False) for s in args.speedups] + [("1x, head on all columns", Schedule.full(L), True)]
    times = {name: [] for name, _, _ in variants}
    cpu = {name: [] for name, _, _ in variants}
    load = os.getloadavg()[0]
    for r in range(args.repeats + 1):
        for name, schedule, head_all in variants:
            dt, dc = step(schedule, head_all)
            if r:  # round 0 warms up
                times[name].append(dt)
                cpu[name].append(dc)
        print(f"round {r}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items() if t), file=sys.stderr)

    base = statistics.median(times[variants[0][0]])
    base_cpu = statistics.median(cpu[variants[0][0]])
    print(f"# training step (fwd + bwd + AdamW), {args.model}, batch {B} x {T} tokens (prompt column {P}, "
          f"{batch.num_tokens} real tokens, {batch.num_targets} targets), median of {args.repeats}")
    print(f"# machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
          f"torch {torch.__version__} {torch.get_num_threads()} threads, load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print("| schedule | wall s (median) | vs 1x | CPU s (median) | vs 1x | layer-column share |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, schedule, _ in variants:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"| {name}: {schedule.describe()} | {med:.2f} | {base / med:.2f}x | {med_cpu:.2f} | "
              f"{base_cpu / med_cpu:.2f}x | {layer_share(schedule, T, P):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
