"""`skipdecode tune`: choose a checkpoint's schedule at a target realised speedup on held-out dev
data, and make it the checkpoint's own (skipdecode.json), which export, run and serve then use."""

from __future__ import annotations

import sys
from pathlib import Path

from skipdecode.cli import options
from skipdecode.cli.dataclass_args import add_fields, from_args
from skipdecode.data import FORMATS
from skipdecode.training.tune_space import PROMPT_DEPTHS, SHAPES, TuneConfig


def add_arguments(p):
    p.add_argument("--model", required=True, metavar="CKPT",
                   help="a fine-tuned checkpoint folder; its skipdecode.json gets the chosen schedule")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="dev files (E2E CSV or JSONL), never the test set; only their held-out part is scored: the "
                        "groups in the run's split.json (the checkpoint's parent folder) when it has one")
    p.add_argument("--format", choices=FORMATS, help="data format (default: from each file's suffix)")
    p.add_argument("--prompt-field", default="prompt", help="JSONL field of the prompt")
    p.add_argument("--target-field", default="target", help="JSONL field of the reference(s)")
    p.add_argument("--out", help="report folder: candidates.json (every candidate) and pareto.png "
                                 "(default: CKPT's parent folder/tune-Sx)")
    p.add_argument("--dry-run", action="store_true", help="write the report only; leave skipdecode.json as it is")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    add_fields(p.add_argument_group("search (TuneConfig, training/tune_space.py)"), TuneConfig,
               choices={"shapes": SHAPES, "prompt_depths": PROMPT_DEPTHS})


def run(args) -> int:
    from skipdecode.datasets import E2E_TEST
    from skipdecode.data import load_examples
    from skipdecode.errors import SkipDecodeError
    from skipdecode.training import tune as tune_report

    config = from_args(TuneConfig, args)
    checkpoint = Path(args.model)
    if not (checkpoint / "config.json").is_file():
        raise SkipDecodeError(f"--model {checkpoint}: not a checkpoint folder (no config.json); tune writes the "
                              "schedule it chooses into the folder's skipdecode.json")
    for path in args.data:
        if Path(path).name == E2E_TEST:
            raise SkipDecodeError(f"--data {path}: the E2E test set; tune chooses on held-out dev data only")
    options.set_torch_threads(args.threads)
    out = Path(args.out) if args.out else checkpoint.resolve().parent / f"tune-{config.target_speedup:g}x"
    if out.exists() and not (out / tune_report.REPORT).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise SkipDecodeError(f"--out {out}: exists and is not a tune report (the report replaces it whole); "
                              "choose another folder")
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise SkipDecodeError("--device cuda: no CUDA device is available")

    from skipdecode.models import load_model
    from skipdecode.schedule import Schedule, trained_schedule

    examples = load_examples(args.data, args.format, args.prompt_field, args.target_field)
    held, heldout = tune_report.heldout_examples(checkpoint, examples, config)
    loaded = load_model(str(checkpoint), args.device)
    trained = trained_schedule(loaded.schedule, loaded.facts, checkpoint)
    L = loaded.model.num_layers
    if trained is not None and trained.num_layers != L:
        raise SkipDecodeError(f"{checkpoint}/skipdecode.json is for {trained.num_layers} layers, the model has {L}")
    family = trained or Schedule.full(L)
    result = tune_report.tune(loaded.model, loaded.tokenizer, held, family, config, heldout,
                              log=lambda s: print(s, file=sys.stderr), facts=loaded.facts)
    tune_report.write_report(out, result, str(checkpoint), args.data)
    print(tune_report.format_table(result))
    c = result.chosen
    met = ("" if result.met_on == "generated" else
           f" (no finalist met {config.target_speedup:g}x on the lengths it generated: chosen on the references')")
    print(f"chosen: {c.schedule.describe()}: realised {c.gen_speedup:.2f}x on its outputs, {c.ref_speedup:.2f}x on "
          f"the references, ROUGE-L {c.rouge_l:.2f} (full depth {result.full.rouge_l:.2f}){met}", file=sys.stderr)
    where = f"report in {out}/{tune_report.REPORT}, {tune_report.PLOT}"
    if args.dry_run:
        print(f"tune: --dry-run, {checkpoint}/skipdecode.json left as it was; {where}", file=sys.stderr)
    else:
        file = tune_report.record_tuned(checkpoint, result, out)
        print(f"tune: wrote the chosen schedule into {file} (export, run and serve use it); {where}", file=sys.stderr)
    return 0
