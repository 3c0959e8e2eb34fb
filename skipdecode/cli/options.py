"""Options shared by the generating commands (generate, run, eval, bench)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import replace

from skipdecode.errors import SkipDecodeError
from skipdecode.io import read_jsonl, write_jsonl
from skipdecode.runtime.api import BACKENDS
from skipdecode.runtime.generate import GenerationConfig, GenerationRun, RowResult
from skipdecode.runtime.sampling import SamplingConfig
from skipdecode.schedule import DECAYS, DEFAULT_WINDOW, DROP_ORDERS, Schedule, default_shape

BACKEND_CHOICES = ("torch", *BACKENDS)
"""--backend of eval and bench: the PyTorch reference (models/backend.py) or a runtime backend."""


def add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule (default: the checkpoint's skipdecode.json, else full depth)")
    g.add_argument("--speedup", type=float, help="target L / mean(n_t) over the window; 1 is full depth")
    g.add_argument("--max-layers", type=int, help="n_0, layers of the first generated token")
    g.add_argument("--min-layers", type=int, help="layers once the window has passed")
    g.add_argument("--window", type=int, default=None, help="steps over which n_t decays (default: the checkpoint's; "
                   f"a full-depth one's is the range it was trained over, else {DEFAULT_WINDOW})")
    g.add_argument("--warmup-layers", type=int, default=None,
                   help="bottom layers every token runs (default: the checkpoint's, else 1)")
    g.add_argument("--decay", choices=DECAYS, default=None,
                   help="how n_t falls over the window (default: the checkpoint's, as --window; else linear)")
    g.add_argument("--drop-order", type=drop_order_arg, metavar="ORDER",
                   help="which layers go first as n_t shrinks: 'paper' (lower-middle first, the top kept longest), "
                        "'even' (kept layers evenly spread), or a comma list of every non-warm-up layer, first "
                        "dropped first (scripts/block_influence.py measures one); default: the checkpoint's, else paper")
    g.add_argument("--prompt-layers", type=int, metavar="N",
                   help="layers the prompt runs, at least n_0 (fewer are raised to it): a cheaper prefill, which the "
                        "model must be trained with (default: the checkpoint's, else all)")


def drop_order_arg(text: str):
    """--drop-order: a name of DROP_ORDERS or a comma list of layer indices."""
    if text in DROP_ORDERS:
        return text
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {' or '.join(DROP_ORDERS)} or a comma list of layers, "
                                         f"got {text!r}") from None


def schedule_family(args, trained: Schedule | None = None) -> dict:
    """Warm-up layers, drop order and prompt depth (``Schedule.family()``): each from its flag,
    else from the checkpoint's schedule, else the default. A checkpoint's drop order lists its own
    warm-up's droppable layers, so another --warmup-layers drops it back to the paper's."""
    family = trained.family() if trained is not None else Schedule.full(1).family()
    warmup = getattr(args, "warmup_layers", None)
    if warmup is not None and warmup != family["warmup_layers"]:
        family.update(warmup_layers=warmup, drop_order=None)
    for name in ("drop_order", "prompt_layers"):
        if getattr(args, name, None) is not None:
            family[name] = getattr(args, name)
    return family


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    src.add_argument("--input", help='JSONL file, one {"prompt": ...} per line; a line may carry its own '
                     '"speedup" and "max_new_tokens"')
    p.add_argument("--output", help="JSONL file for the results (input order); default: print")
    p.add_argument("--max-batch", "--batch-size", dest="batch_size", type=int, default=8,
                   help="rows decoding at once in the continuous batch (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    add_schedule_arguments(p)
    g = p.add_argument_group("sampling (default greedy)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)


def solve_shape(args, trained: Schedule | None = None, facts: Mapping | None = None) -> dict:
    """--window and --decay, each defaulting to the checkpoint's (``default_shape``)."""
    return default_shape(trained, facts, args.window, args.decay)


def build_schedule(args, num_layers: int, trained: Schedule | None = None, facts: Mapping | None = None) -> Schedule:
    """The schedule the flags name; without any, the checkpoint's own (``trained``), else full depth.
    ``facts`` (its skipdecode.json less the schedule) give a speedup-range model's window and decay."""
    if trained is not None and trained.num_layers != num_layers:
        raise SkipDecodeError(f"skipdecode.json is for {trained.num_layers} layers, the model has {num_layers}")
    shape = solve_shape(args, trained, facts)
    explicit = args.max_layers is not None or args.min_layers is not None
    if args.speedup is not None and explicit:
        raise SkipDecodeError("give --speedup or --max-layers/--min-layers, not both")
    family = schedule_family(args, trained)
    if args.speedup is not None:
        if args.speedup == 1:
            return Schedule.full(num_layers, **family)
        return Schedule.for_speedup(num_layers, args.speedup, **shape, **family)
    if explicit:
        mx = args.max_layers if args.max_layers is not None else num_layers
        mn = args.min_layers if args.min_layers is not None else mx
        return Schedule(num_layers, mx, mn, **shape, **family)
    if trained is not None:
        return replace(trained, **family)
    return Schedule.full(num_layers, **family)


def read_prompts(args) -> list[str]:
    return [row["prompt"] for row in read_rows(args)]


def read_rows(args) -> list[dict]:
    """The prompts as dicts: ``prompt``, and from --input lines optionally ``speedup`` and
    ``max_new_tokens`` (checked here, so a bad line is one error naming it)."""
    if args.prompt:
        return [{"prompt": p} for p in args.prompt]
    rows = read_jsonl(args.input, required=("prompt",))
    for i, row in enumerate(rows, 1):
        for key, kind, low in (("speedup", (int, float), 1), ("max_new_tokens", int, 1)):
            v = row.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, kind) or v < low):
                raise SkipDecodeError(f"{args.input} line {i}: {key} must be a number >= {low}, got {v!r}")
    return rows


def row_schedules(rows: list[dict], default: Schedule, solve) -> list[Schedule]:
    """Each row's schedule: its own ``speedup`` solved by ``solve(speedup)``, else ``default``."""
    cache: dict[float, Schedule] = {}
    out = []
    for row in rows:
        s = row.get("speedup")
        if s is None:
            out.append(default)
        else:
            if s not in cache:
                cache[s] = solve(float(s))
            out.append(cache[s])
    return out


def generation_config(args) -> GenerationConfig:
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    return GenerationConfig(args.max_new_tokens, sampling, tuple(args.stop))


def emit(rows: list[RowResult], output: str | None) -> None:
    records = [{"prompt": r.prompt, "output": r.text, "tokens": r.tokens, "mean_layers": round(r.mean_layers, 3),
                "finish_reason": r.finish_reason, "token_ids": r.token_ids} for r in rows]
    if output:
        write_jsonl(output, records)
    else:
        for rec in records:
            print(json.dumps({k: rec[k] for k in ("prompt", "output", "tokens", "mean_layers")}, ensure_ascii=False))


def summary(run: GenerationRun, schedule: Schedule | list[Schedule]) -> str:
    tokens, layers, elapsed = run.tokens, run.mean_layers, run.wall_s
    schedules = [schedule] if isinstance(schedule, Schedule) else list(dict.fromkeys(schedule))
    what = schedules[0].describe() if len(schedules) == 1 else f"{len(schedules)} schedules"
    L = schedules[0].num_layers
    return (f"{what}: {tokens} tokens in {elapsed:.2f} s = {tokens / elapsed:.1f} tokens/s, "
            f"mean layers {layers:.2f} (layer speedup {L / max(layers, 1e-9):.2f}x)")


def set_torch_threads(threads: int | None) -> None:
    """--threads of the torch commands: torch's intra-op threads (None: torch's default, one per core)."""
    if threads is None:
        return
    if threads < 1:
        raise SkipDecodeError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
