"""`skipdecode train`: skip-aware fine-tuning (also under `accelerate launch -m skipdecode.cli.main train`)."""

from __future__ import annotations

import json
import sys

from skipdecode.cli import options


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
    p.add_argument("--out", required=True, help="output folder: checkpoints, log.jsonl, split.json")
    options.add_schedule_arguments(p)
    p.add_argument("--speedup-range", metavar="A:B", help="sample a schedule per batch with a speedup in [A, B]")
    p.add_argument("--distill-from", metavar="SPEC", help="full-depth teacher for a KL term (e.g. the base model)")
    p.add_argument("--distill-weight", type=float, default=0.5, help="loss = (1-w) CE + w KL (default 0.5)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--epochs", type=float, help="passes over the training data")
    g.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="examples per micro-batch and process (default 16)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps, then linear decay")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (and at the start and end)")
    p.add_argument("--eval-examples", type=int, default=128, help="held-out examples for the dev loss")
    p.add_argument("--eval-samples", type=int, default=4, help="held-out prompts decoded greedily per evaluation")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (always at the end and on Ctrl-C)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="numbered checkpoints to keep")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--max-length", type=int, default=256, help="drop examples longer than this many tokens")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="auto: bf16 on CUDA where supported, fp32 on CPU")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_sampler(args):
    from skipdecode.errors import SkipDecodeError
    from skipdecode.training.schedules import ScheduleSampler, parse_range

    def build(num_layers, trained):
        window = args.window if args.window is not None else (trained.window if trained else 32)
        if args.speedup_range:
            if args.speedup is not None or args.max_layers is not None or args.min_layers is not None:
                raise SkipDecodeError("give --speedup-range or --speedup/--max-layers/--min-layers, not both")
            lo, hi = parse_range(args.speedup_range)
            return ScheduleSampler.for_range(num_layers, lo, hi, window, args.warmup_layers, args.decay)
        return ScheduleSampler(fixed=options.build_schedule(args, num_layers, trained), window=window,
                               warmup_layers=args.warmup_layers, decay=args.decay)

    return build


def run(args) -> int:
    from pathlib import Path

    from skipdecode.errors import SkipDecodeError
    from skipdecode.io import atomic_write_text
    from skipdecode.training.config import TrainConfig
    from skipdecode.data import load_examples, split_heldout
    from skipdecode.training.trainer import Trainer

    if args.threads is not None:
        if args.threads < 1:
            raise SkipDecodeError(f"--threads must be >= 1, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)
    if args.distill_from is None and args.distill_weight != 0.5:
        raise SkipDecodeError("--distill-weight needs --distill-from")
    if args.speedup_range:  # fail on a malformed range before loading anything
        from skipdecode.training.schedules import parse_range
        parse_range(args.speedup_range)
    cfg = TrainConfig(
        out=Path(args.out), max_steps=args.max_steps, epochs=args.epochs, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, seed=args.seed, eval_every=args.eval_every, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, log_every=args.log_every, eval_examples=args.eval_examples,
        eval_samples=args.eval_samples, max_length=args.max_length, distill_weight=args.distill_weight,
        mixed_precision=args.mixed_precision, progress=not args.no_progress,
    )
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
    if args.eval_every and not held:
        raise SkipDecodeError("--eval-every needs evaluation data: --eval-data or --holdout > 0")
    info = {"base_model": args.model, "distill_from": args.distill_from, "format": args.format or "auto",
            "data": list(args.data)}
    trainer = Trainer(cfg, args.model, train, held, make_sampler(args), args.distill_from, args.resume, info)
    if split is not None and trainer.is_main and not args.resume:
        atomic_write_text(Path(args.out) / "split.json", json.dumps(split, indent=2, ensure_ascii=False) + "\n")
    if trainer.is_main:
        print(f"skipdecode train: {len(trainer.pairs)} examples, {len(held)} held out, "
              f"{trainer.sampler.saved().describe()}"
              + (f" (range {args.speedup_range})" if args.speedup_range else "")
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
