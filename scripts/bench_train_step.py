"""Training step time under skip schedules (forward + backward + AdamW step), same batch each.

    python scripts/bench_train_step.py --data /path/to/e2e/devset.csv [--model smollm2-135m]
        [--speedups 1 3 5] [--batch-size 16] [--repeats 5] [--window 32] [--threads N]
        [--precisions fp32 bf16] [--optimizers adamw fused] [--prompt-layers N] [--entry-adapter RANK]
        [--compile]

Every (speedup, precision, optimizer) is a variant; the first of each list is the baseline the
others vary from one at a time. Variants are timed in interleaved rounds after one warm-up round,
so load from other processes on a shared machine hits them alike; the report gives medians and
ratios to the first variant measured in the same run, the share of (layer, column) pairs each
schedule computes, and the machine (with its native-bf16 flags). Besides wall time it reports the
process's CPU time, which other processes' load barely disturbs (with --threads 1 it is the step's
compute time). bf16 is autocast over fp32 weights, as `skipdecode train --mixed-precision bf16`
runs it; ``adamw`` is the optimizer with torch's default implementation, ``fused`` its fused kernel
(what training/optim.py uses). ``--entry-adapter R`` adds the first skip speedup with rank-R entry
adapters (``train --entry-adapter``), beside the same schedule without them. ``--compile`` adds each
speedup again with every decoder layer under ``torch.compile(dynamic=True)`` (the same weights);
their warm-up round, which compiles, is reported apart.
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
from skipdecode.cpu import cpu_flags, cpu_model
from skipdecode.training.precision import NATIVE_BF16_FLAGS


def layer_share(schedule: Schedule, T: int, P: int) -> float:
    """Fraction of the (layer, column) pairs of a full forward that this schedule computes."""
    if schedule.is_full:
        return 1.0
    L = schedule.num_layers
    return sum(schedule.columns_running_layer(layer, P, T - P) for layer in range(L)) / (L * T)


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
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    p.add_argument("--optimizers", nargs="+", choices=["adamw", "fused"], default=["fused"])
    p.add_argument("--prompt-layers", type=int, help="prompt depth of the skip schedules (default: all layers)")
    p.add_argument("--no-head-all", action="store_true", help="skip the 'head on all columns' variant")
    p.add_argument("--entry-adapter", help="also time the first skip speedup with entry adapters of this rank")
    p.add_argument("--compile", action="store_true", help="also time each speedup with torch.compile'd decoder layers")
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
    schedules = {s: Schedule.full(L) if s == 1 else Schedule.for_speedup(L, s, args.window,
                                                                          prompt_layers=args.prompt_layers)
                 for s in args.speedups}
    adapters = None
    if args.entry_adapter:
        from skipdecode.models.adapters import parse_rank

        adapters = model.add_entry_adapters(parse_rank(args.entry_adapter), Schedule.full(L).entry_layers,
                                            seed=args.seed)
    optimizers = {o: torch.optim.AdamW(model.parameters(), lr=1e-6, fused=o == "fused") for o in args.optimizers}

    layers = model.decoder_layers
    plain = list(layers)
    compiled = [torch.compile(layer, dynamic=True) for layer in plain] if args.compile else []

    def step(schedule: Schedule, precision: str, opt: str, head_all: bool = False,
             adapted: bool = False, compiled_layers: bool = False) -> tuple[float, float, float]:
        optimizer = optimizers[opt]
        model.entry_adapters = adapters if adapted else None
        if compiled:  # swap in the variant's layers (the same parameters either way)
            for i, layer in enumerate(compiled if compiled_layers else plain):
                layers[i] = layer
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if head_all:  # the LM head over every column, as a plain causal-LM trainer would
                _, loss = model(batch.input_ids, batch.attention_mask, labels=batch.labels, schedule=schedule,
                                prompt_len=P)
            else:
                loss, _ = batch_loss(model, batch, schedule)
        loss.backward()
        c1 = time.process_time()
        optimizer.step()
        return time.perf_counter() - t0, time.process_time() - c0, time.process_time() - c1

    p0, o0 = args.precisions[0], args.optimizers[0]
    variants = [(f"{s:g}x {p0} {o0}", schedules[s], p0, o0, False) for s in args.speedups]
    variants += [(f"{args.speedups[0]:g}x {p} {o0}", schedules[args.speedups[0]], p, o0, False)
                 for p in args.precisions[1:]]
    variants += [(f"{args.speedups[0]:g}x {p0} {o}", schedules[args.speedups[0]], p0, o, False)
                 for o in args.optimizers[1:]]
    if not args.no_head_all:
        variants.append((f"1x {p0} {o0}, head on all columns", Schedule.full(L), p0, o0, True))
    if adapters is not None:
        skip = next((s for s in args.speedups if s > 1), None)
        if skip is None:
            p.error("--entry-adapter needs a speedup above 1 in --speedups (full depth enters no layer)")
        variants.append((f"{skip:g}x {p0} {o0}, entry adapters rank {args.entry_adapter}", schedules[skip], p0, o0,
                         False, True))
    if args.compile:
        variants += [(f"{s:g}x {p0} {o0}, compiled", schedules[s], p0, o0, False, False, True) for s in args.speedups]
    times = {v[0]: [] for v in variants}
    cpu = {v[0]: [] for v in variants}
    opt_cpu = {v[0]: [] for v in variants}
    warmup = {}  # round 0's wall s per variant
    load = os.getloadavg()[0]
    for r in range(args.repeats + 1):
        for name, schedule, *how in variants:  # how: precision, optimizer, head_all[, adapted[, compiled]]
            dt, dc, do = step(schedule, *how)
            if r:  # round 0 warms up
                times[name].append(dt)
                cpu[name].append(dc)
                opt_cpu[name].append(do)
            else:
                warmup[name] = dt
        print(f"round {r}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items() if t), file=sys.stderr)

    base = statistics.median(times[variants[0][0]])
    base_cpu = statistics.median(cpu[variants[0][0]])
    native = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags()) or ["none"]
    print(f"# training step (fwd + bwd + AdamW), {args.model}, batch {B} x {T} tokens (prompt column {P}, "
          f"{batch.num_tokens} real tokens, {batch.num_targets} targets), median of {args.repeats}")
    print(f"# machine: {platform.machine()} {cpu_model()} {os.cpu_count()} cores, native bf16 flags: "
          f"{', '.join(native)}; torch {torch.__version__} {torch.get_num_threads()} threads, load average "
          f"{load:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"| variant | wall s (median) | vs {variants[0][0]} | CPU s (median) | vs first | of which optimizer "
          f"CPU s | layer-column share |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, schedule, *_ in variants:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"| {name}: {schedule.describe()} | {med:.2f} | {base / med:.2f}x | {med_cpu:.2f} | "
              f"{base_cpu / med_cpu:.2f}x | {statistics.median(opt_cpu[name]):.2f} | "
              f"{layer_share(schedule, T, P):.2f} |")
    if args.compile:
        print("# warm-up round (compiles the compiled variants), wall s: "
              + ", ".join(f"{n} {t:.1f}" for n, t in warmup.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
