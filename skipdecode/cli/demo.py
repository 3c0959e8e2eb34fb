"""`skipdecode demo`: the README's main job (skipdecode/pipeline.py): fine-tune SmolLM2 under a
skip schedule, export it per layer, serve it with ONNX Runtime, and compare full depth with the
schedule on E2E test MRs (quality and tokens/s)."""

from __future__ import annotations


def add_arguments(p):
    from skipdecode.pipeline import DemoConfig as D

    p.add_argument("--model", default=D.model, help="base model (default smollm2-135m)")
    p.add_argument("--data", default=None, help="E2E folder with devset.csv and testset_w_refs.csv "
                   "(default ../shared/data/e2e, else the public release)")
    p.add_argument("--out", default=str(D.out), help=f"outputs, re-used when present (default {D.out})")
    p.add_argument("--steps", type=int, default=D.steps, help=f"fine-tuning steps of batch 16 (default {D.steps})")
    p.add_argument("--fine-tune-minutes", type=float, default=D.fine_tune_minutes, metavar="MIN",
                   help="fine-tune for as many of --steps as fit in this many minutes at the pace of the warm-up "
                        f"steps, so the demo keeps to its time on slower hosts; 0: all of them (default {D.fine_tune_minutes:g})")
    p.add_argument("--speedup", type=float, default=D.speedup, help=f"target speedup (default {D.speedup:g})")
    p.add_argument("--window", type=int, default=D.window, help=f"decay window in tokens (default {D.window})")
    p.add_argument("--fixed-schedule", action="store_true", help="fine-tune under the --speedup schedule only "
                   "(default: speedups drawn from 1..--speedup per batch, so one checkpoint serves both columns)")
    p.add_argument("--range-ends", type=float, default=D.range_ends, metavar="P",
                   help=f"share of fine-tuning batches at 1x or --speedup, the rest drawn between (default {D.range_ends:g})")
    p.add_argument("--test-inputs", type=int, default=D.test_inputs, help=f"test MRs scored (default {D.test_inputs})")
    p.add_argument("--timed-inputs", type=int, default=D.timed_inputs,
                   help=f"the first of those MRs that the speed columns time (default {D.timed_inputs})")
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--seed", type=int, default=D.seed, help="seeds the fine-tuning and the augmentation; the "
                   f"held-out dev MRs stay seed 0's (default {D.seed})")
    p.add_argument("--augment-names", type=float, default=D.augment_names, metavar="SHARE",
                   help=f"share of fine-tuning pairs with made-up venue names (default {D.augment_names:g})")
    p.add_argument("--augment-values", type=float, default=D.augment_values, metavar="SHARE",
                   help=f"share of fine-tuning pairs with eatType and food swapped (default {D.augment_values:g})")
    p.add_argument("--self-distill", type=float, default=D.self_distill, metavar="W",
                   help=f"in-place distillation weight: skip batches learn the model's own full depth "
                        f"(default {D.self_distill:g})")
    p.add_argument("--entry-adapter", default=D.entry_adapter, help="entry adapters' rank, or full; 0: none "
                   f"(default {D.entry_adapter})")


def run(args) -> int:
    from pathlib import Path

    from skipdecode.pipeline import DemoConfig, run_demo

    run_demo(DemoConfig(model=args.model, data=args.data, out=Path(args.out), steps=args.steps, speedup=args.speedup,
                        fine_tune_minutes=args.fine_tune_minutes, seed=args.seed,
                        window=args.window, any_budget=not args.fixed_schedule,
                        range_ends=args.range_ends, test_inputs=args.test_inputs,
                        timed_inputs=args.timed_inputs, batch_size=args.batch_size,
                        augment_names=args.augment_names, augment_values=args.augment_values,
                        self_distill=args.self_distill, entry_adapter=args.entry_adapter))
    return 0
