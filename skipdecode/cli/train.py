"""`skipdecode train`: skip-aware fine-tuning (also under `accelerate launch -m skipdecode.cli.main train`)."""

from __future__ import annotations

import json
import sys

from skipdecode.cli import options
from skipdecode.cli.dataclass_args import add_fields, from_args
from skipdecode.training.config import MIXED_PRECISION, TrainConfig


def add_arguments(p):
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m, an HF checkpoint folder or a .gguf file")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="training files: E2E CSV (columns mr, ref) or JSONL; several are concatenated")
    p.add_argument("--format", choices=["e2e", "jsonl"], help="data format (default: from each file's suffix)")
    p.add_argument("--prompt-field", default="prompt", help="JSONL field of the prompt (used verbatim)")
    p.add_argument("--target-field", default="target", help="JSONL field of the target text")
    p.add_argument("--eval-data", nargs="+", metavar="PATH", help="evaluation files (default: --holdout of --data)")
    p.add_argument("--holdout", type=float, default=None,
                   help="fraction of --data's prompt groups (E2E: whole MRs) held out for evaluation "
                        "(default 0.05 when --eval-every is set and --eval-data is not)")
    options.add_schedule_arguments(p)
    p.add_argument("--speedup-range", metavar="A:B", help="sample a schedule per batch with a speedup in [A, B]")
    p.add_argument("--range-ends", type=float, default=0.0, metavar="P",
                   help="with --speedup-range: the share of batches drawn at A or B (half each), the rest "
                        "uniform in [A, B] (default 0)")
    p.add_argument("--augment-names", type=float, default=0.0, metavar="SHARE",
                   help="E2E: rename the venue and its landmark (name[...], near[...]) to made-up names in "
                        "this share of the training pairs, MR and reference alike, so the model learns to copy "
                        "names rather than memorise the dev files' twenty (skipdecode/augment.py; default 0)")
    p.add_argument("--augment-values", type=float, default=0.0, metavar="SHARE",
                   help="E2E: swap eatType and food for another value the training files use, MR and reference "
                        "alike, in this share of the training pairs: balances skewed files (the dev files have "
                        "4 pubs in 8,971 pairs) (skipdecode/augment.py; default 0)")
    p.add_argument("--distill-from", metavar="SPEC", help="full-depth teacher for a KL term (e.g. the base model)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    g = p.add_argument_group("fine-tuning (TrainConfig, training/config.py)")
    length = g.add_mutually_exclusive_group(required=True)
    add_fields(length, TrainConfig, only=("max_steps", "epochs"))
    add_fields(g, TrainConfig, exclude=("max_steps", "epochs"), choices={"mixed_precision": MIXED_PRECISION},
               metavars={"entry_adapter": "RANK"})


def make_sampler(args):
    from skipdecode.errors import SkipDecodeError
    from skipdecode.training.schedules import ScheduleSampler, parse_range

    def build(num_layers, trained):
        shape = options.solve_shape(args, trained)
        if args.speedup_range:
            if args.speedup is not None or args.max_layers is not None or args.min_layers is not None:
                raise SkipDecodeError("give --speedup-range or --speedup/--max-layers/--min-layers, not both")
            lo, hi = parse_range(args.speedup_range)
            return ScheduleSampler.for_range(num_layers, lo, hi, shape["window"], decay=shape["decay"],
                                             ends=args.range_ends, **options.schedule_family(args, trained))
        fixed = options.build_schedule(args, num_layers, trained)
        return ScheduleSampler(fixed=fixed, window=shape["window"], decay=shape["decay"], **fixed.family())

    return build


def run(args) -> int:
    from pathlib import Path

    from skipdecode.errors import SkipDecodeError
    from skipdecode.io import atomic_write_text
    from skipdecode.data import load_examples, split_heldout
    from skipdecode.training.trainer import Trainer

    options.set_torch_threads(args.threads)
    if args.distill_from is None and args.distill_weight != TrainConfig.distill_weight:
        raise SkipDecodeError("--distill-weight needs --distill-from")
    if args.range_ends and not args.speedup_range:
        raise SkipDecodeError("--range-ends needs --speedup-range")
    if args.speedup_range:  # fail on a malformed range before loading anything
        from skipdecode.training.schedules import check_ends, parse_range
        parse_range(args.speedup_range)
        check_ends(args.range_ends)
    from skipdecode.augment import AUGMENT_FIELDS, check_shares
    check_shares(args.augment_names, args.augment_values)
    cfg = from_args(TrainConfig, args)
    fields = dict(fmt=args.format, prompt_field=args.prompt_field, target_field=args.target_field)
    train = load_examples(args.data, **fields)
    split = None
    if args.eval_data:
        if args.holdout:
            raise SkipDecodeError("give --eval-data or --holdout, not both")
        held = load_examples(args.eval_data, **fields)
    else:
        fraction = args.holdout if args.holdout is not None else (0.05 if args.eval_every else 0.0)
        train, held = split_heldout(train, fraction, args.seed)
        split = {"holdout": fraction, "seed": args.seed, "data": list(args.data), "train_examples": len(train),
                 "heldout_examples": len(held), "heldout_groups": sorted({e.group for e in held}),
                 "format": args.format, "prompt_field": args.prompt_field, "target_field": args.target_field}
    augmented = {k: getattr(args, k) for k in AUGMENT_FIELDS if getattr(args, k)}
    if augmented:
        from skipdecode.augment import augment
        train = augment(train, args.augment_names, args.augment_values, args.seed)  # after the split: held-out stays real
        if split is not None:
            split.update(augmented)
    if args.eval_every and not held:
        raise SkipDecodeError("--eval-every needs evaluation data: --eval-data or --holdout > 0")
    info = {"base_model": args.model, "distill_from": args.distill_from, "format": args.format or "auto",
            "data": list(args.data), **augmented}
    trainer = Trainer(cfg, args.model, train, held, make_sampler(args), args.distill_from, args.resume, info).setup()
    if split is not None and trainer.is_main and not args.resume:
        atomic_write_text(Path(args.out) / "split.json", json.dumps(split, indent=2, ensure_ascii=False) + "\n")
    if trainer.is_main:
        adapters = trainer.unwrapped.entry_adapters
        print(f"skipdecode train: {len(trainer.pairs)} examples, {len(held)} held out, "
              f"{trainer.sampler.saved().describe()}"
              + (f" (range {args.speedup_range})" if args.speedup_range else "")
              + (f", entry adapters of rank {adapters.rank} at layers {list(adapters.layers)}"
                 if adapters is not None else "")
              + f", {trainer.total_steps} steps from step {trainer.step}", file=sys.stderr)
    result = trainer.run()
    if trainer.is_main:
        if result.interrupted:
            print(f"skipdecode train: interrupted at step {result.step}; checkpoint {result.checkpoint} "
                  f"(continue with --resume)", file=sys.stderr)
            return 130
        loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
        print(f"skipdecode train: done, {result.step} steps, last train loss {loss}; model in {result.checkpoint}",
              file=sys.stderr)
    return 130 if result.interrupted else 0
