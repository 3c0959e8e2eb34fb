"""`skipdecode tune`: choose, for one checkpoint, the best schedule of its family at a target
*realised* speedup, on held-out dev data only.

Two stages, cheap first: every candidate of the search space (training/tune_space.py) is scored
by its teacher-forced dev loss on held-out pairs (one batched forward each), then the best few
generate greedily through the runtime loop and are scored by ROUGE-L on held-out prompts. The
chosen schedule becomes the checkpoint's own (skipdecode.json's ``schedule``), which ``export``,
``run`` and ``serve`` then run by default; the one it was trained under is kept beside it.
"""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from tqdm import tqdm

from skipdecode.data import Example, group_examples, read_split, split_heldout
from skipdecode.errors import SkipDecodeError
from skipdecode.evaluation.metrics import score
from skipdecode.io import atomic_dir
from skipdecode.models.backend import TorchBackend
from skipdecode.runtime.api import Runtime
from skipdecode.schedule import TRAINED_SCHEDULE, Schedule, read_schedule_file, write_schedule_file
from skipdecode.training.batches import tokenize
from skipdecode.training.evaluate import dev_loss, spread
from skipdecode.training.tune_space import (EPS, Candidate, TuneConfig, largest_min, pareto_front, pick_finalists,
                                            realised_speedup, references, search_space, select)

REPORT = "candidates.json"
PLOT = "pareto.png"
SAMPLES = 3
"""Generations kept per scored schedule in the report, for reading."""


@dataclass
class TuneResult:
    candidates: list[Candidate]
    """The full-depth reference and the default first, then every searched candidate."""
    chosen: Candidate
    met_on: str
    """Which lengths the chosen schedule met the target on: generated, or references (none of the
    finalists met it on what they generated)."""
    family: Schedule
    """The schedule the checkpoint was trained under (full depth without one): warm-up layers, drop order."""
    heldout: str
    """Where the held-out data came from."""
    proxy_pairs: int
    eval_mrs: int
    config: TuneConfig

    @property
    def full(self) -> Candidate:
        return next(c for c in self.candidates if c.role == "full")


def heldout_examples(checkpoint: Path, examples: Sequence[Example], config: TuneConfig) -> tuple[list[Example], str]:
    """The examples of ``examples`` held out from the checkpoint's training: its run's split.json's
    groups (the run is the checkpoint's parent folder), else a seeded split of the groups with the
    demo's fraction and seed; -> (examples, where they came from)."""
    run = Path(checkpoint).resolve().parent
    if (run / "split.json").is_file():
        file, _, groups, _ = read_split(run)
        held = [e for e in examples if e.group in groups]
        if not held:
            raise SkipDecodeError(f"{file}: none of its {len(groups)} held-out groups are in --data")
        return held, f"the groups {file} held out"
    _, held = split_heldout(examples, config.holdout, config.seed)
    return held, (f"{config.holdout:g} of --data's groups (seed {config.seed}), as the demo holds out: {run} has no "
                  "split.json, so the checkpoint may have trained on them")


def tune(model, tokenizer, held: Sequence[Example], family: Schedule, config: TuneConfig, heldout: str = "",
         log=print, facts: Mapping | None = None) -> TuneResult:
    """Search ``family``'s schedules on ``held`` (examples the checkpoint did not train on);
    ``facts`` (skipdecode.json less the schedule) give the default's shape for a range model."""
    S = config.target_speedup
    pairs, dropped = tokenize(held, tokenizer, config.max_length)
    grouped = group_examples(held)
    prompts = spread(grouped, config.eval_mrs)
    if not pairs:
        raise SkipDecodeError(f"no held-out pair fits in --max-length {config.max_length} tokens")
    lengths = [len(t) for _, t in pairs]  # the references' own lengths, EOS included as generation counts it
    try:
        searched = search_space(family, lengths, config)
    except ValueError as e:
        raise SkipDecodeError(str(e)) from None
    candidates = references(family, S, lengths, facts) + searched
    proxy = spread(pairs, config.proxy_pairs)
    device = next(model.parameters()).device
    runtime = Runtime(TorchBackend(model), tokenizer)
    losses: dict[Schedule, float] = {}  # one forward per distinct schedule (the default may be a candidate)
    generated: dict[Schedule, tuple] = {}

    def proxy_loss(c: Candidate) -> None:
        if c.schedule not in losses:
            losses[c.schedule] = dev_loss(model, proxy, c.schedule, config.batch_size, tokenizer.pad_id, device)
        c.proxy_loss = losses[c.schedule]

    def generate(c: Candidate) -> list[int]:
        """Greedy outputs under ``c``: its ROUGE-L, BLEU and realised speedup; -> their lengths."""
        if c.schedule not in generated:
            rows = runtime.generate([e.prompt for e in prompts], c.schedule, max_new_tokens=config.max_new_tokens,
                                    batch_size=config.batch_size)
            texts = [r.text.strip() for r in rows]
            generated[c.schedule] = (texts, [r.tokens for r in rows], score(texts, [e.references for e in prompts]))
        texts, lens, s = generated[c.schedule]
        c.rouge_l, c.bleu, c.gen_speedup = s.rouge_l, s.bleu, realised_speedup(c.schedule, lens)
        c.samples = [{"input": e.input, "output": t} for e, t in zip(prompts[:SAMPLES], texts)]
        c.finalist = c.role == "candidate"
        return lens

    log(f"tune: {len(pairs)} held-out pairs ({len(grouped)} prompts; {dropped} too long) from {heldout}; "
        f"{len(searched)} candidates of the family at {S:g}x realised, proxy on {len(proxy)} pairs")
    bar = dict(unit="schedule", disable=not config.progress, file=sys.stderr)
    for c in tqdm(candidates, desc="tune: proxy (dev loss)", **bar):
        proxy_loss(c)
    finalists = pick_finalists(searched, config.finalists)
    short = []
    for c in tqdm([c for c in candidates if c.role != "candidate"] + finalists, desc="tune: generate + ROUGE-L",
                  **bar):
        lens = generate(c)
        if c.finalist and c.gen_speedup < S - EPS:
            short.append((c, lens))
    # a finalist whose outputs ended sooner than the references realised less than solved for:
    # re-solved once on its own outputs' lengths, and scored again
    known = {c.schedule for c in candidates}
    for c, lens in tqdm(short, desc="tune: re-solve the short ones", **bar):
        s = largest_min(c.schedule, lens, S, start=c.schedule.min_layers - 1)
        if s is None:
            continue
        if s in known:  # already a candidate: scored as it is
            generate(next(x for x in candidates if x.schedule == s))
            continue
        known.add(s)
        again = Candidate(s, c.shape, ref_speedup=realised_speedup(s, lengths), refined=True)
        proxy_loss(again)
        generate(again)
        candidates.append(again)
    chosen, met_on = select(candidates, S, config.shortfall)
    chosen.chosen = True
    return TuneResult(candidates, chosen, met_on, family, heldout, len(proxy), len(prompts), config)


# ---- output -----------------------------------------------------------------------------------
def format_table(result: TuneResult) -> str:
    """The scored schedules (references and finalists), the chosen one marked with *."""
    head = f"  {'role':10}{'schedule':78}{'refs x':>8}{'proxy':>8}{'gen x':>8}{'ROUGE-L':>9}{'BLEU':>7}"
    lines = [head]
    for c in result.candidates:
        if c.rouge_l is None:
            continue
        role = "re-solved" if c.refined else c.role
        lines.append(f"{'*' if c.chosen else ' '} {role:10}{c.schedule.describe()[:77]:78}{c.ref_speedup:8.2f}"
                     f"{c.proxy_loss:8.3f}{c.gen_speedup:8.2f}{c.rouge_l:9.2f}{c.bleu:7.2f}")
    rest = sum(c.rouge_l is None for c in result.candidates)
    lines.append(f"(+{rest} candidates scored by the proxy only; refs x / gen x: realised speedup on the "
                 f"references' / the generated lengths)")
    return "\n".join(lines)


def report(result: TuneResult, checkpoint: str, data: Sequence[str]) -> dict:
    return {"checkpoint": str(checkpoint), "data": [str(d) for d in data], "heldout": result.heldout,
            "target_speedup": result.config.target_speedup, "met_on": result.met_on,
            "proxy_pairs": result.proxy_pairs, "eval_mrs": result.eval_mrs, "config": asdict(result.config),
            "family": result.family.to_dict(), "chosen": result.candidates.index(result.chosen),
            "candidates": [c.to_record() for c in result.candidates]}


def write_report(out: str | Path, result: TuneResult, checkpoint: str, data: Sequence[str]) -> Path:
    """``out``/candidates.json (every candidate) and ``out``/pareto.png, written atomically."""
    with atomic_dir(out) as tmp:
        (tmp / REPORT).write_text(json.dumps(report(result, checkpoint, data), indent=2, ensure_ascii=False) + "\n")
        plot(result, tmp / PLOT, title=f"{checkpoint}: {result.config.target_speedup:g}x realised, "
                                       f"{result.eval_mrs} held-out prompts")
    return Path(out)


def record_tuned(checkpoint: str | Path, result: TuneResult, out: str | Path) -> Path:
    """Make the chosen schedule the checkpoint's own: skipdecode.json's ``schedule``, the other
    facts kept, the schedule it was trained under kept as ``trained_schedule`` (the first time
    only), and a ``tuned`` record of how it was chosen."""
    schedule, facts = read_schedule_file(checkpoint)
    facts.setdefault(TRAINED_SCHEDULE, schedule.to_dict() if schedule is not None else None)
    c = result.chosen
    facts["tuned"] = {
        "target_speedup": result.config.target_speedup, "realised_speedup": round(c.gen_speedup, 4),
        "realised_speedup_references": round(c.ref_speedup, 4), "met_on": result.met_on,
        "rouge_l": round(c.rouge_l, 4), "bleu": round(c.bleu, 4), "proxy_loss": round(c.proxy_loss, 4),
        "full_depth_rouge_l": round(result.full.rouge_l, 4), "eval_mrs": result.eval_mrs,
        "proxy_pairs": result.proxy_pairs, "candidates": sum(x.role == "candidate" for x in result.candidates),
        "heldout": result.heldout, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "out": str(Path(out).resolve())}
    return write_schedule_file(checkpoint, c.schedule, facts)


SHAPE_COLORS = {"full": "black", "static": "tab:blue", "linear": "tab:orange", "power": "tab:green"}


def plot(result: TuneResult, path: str | Path, title: str = "") -> None:
    """Left: dev ROUGE-L against realised speedup (generated lengths) of the scored schedules,
    their Pareto front, the target and the chosen one. Right: proxy loss against realised speedup
    (references' lengths) of every candidate, finalists ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = result.config.target_speedup
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    scored = [c for c in result.candidates if c.rouge_l is not None]
    for c in scored:
        marker = {"full": "*", "default": "X"}.get(c.role, "o")
        left.scatter(c.gen_speedup, c.rouge_l, marker=marker, s=140 if c.role == "full" else 60,
                     color=SHAPE_COLORS[c.shape], zorder=3)
        left.annotate(_label(c), (c.gen_speedup, c.rouge_l), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = [scored[i] for i in pareto_front([(c.gen_speedup, c.rouge_l) for c in scored])]
    left.plot([c.gen_speedup for c in front], [c.rouge_l for c in front], color="grey", linewidth=1, zorder=2,
              label="Pareto front")
    ch = result.chosen
    left.scatter(ch.gen_speedup, ch.rouge_l, s=320, facecolors="none", edgecolors="red", linewidths=2, zorder=4,
                 label=f"chosen: {_label(ch)}")
    left.axvline(S, color="red", linestyle=":", linewidth=1, label=f"target {S:g}x")
    left.set_xlabel("realised speedup on the generated lengths (L / mean layers)")
    left.set_ylabel("dev ROUGE-L")
    left.set_title(f"generation: {result.eval_mrs} held-out prompts\n(star: full depth, X: --speedup {S:g}, "
                   "r: re-solved on its own outputs)", fontsize=9)
    for shape, color in SHAPE_COLORS.items():
        pts = [c for c in result.candidates if c.shape == shape and c.proxy_loss is not None]
        if pts:
            right.scatter([c.ref_speedup for c in pts], [c.proxy_loss for c in pts], color=color, s=25, label=shape)
    fin = [c for c in result.candidates if c.rouge_l is not None]
    right.scatter([c.ref_speedup for c in fin], [c.proxy_loss for c in fin], s=110, facecolors="none",
                  edgecolors="black", label="generated")
    right.axvline(S, color="red", linestyle=":", linewidth=1)
    right.set_xlabel("realised speedup on the references' lengths")
    right.set_ylabel("teacher-forced dev loss")
    right.set_title(f"proxy: {result.proxy_pairs} held-out pairs\n(every candidate; ringed: generated)", fontsize=9)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(c: Candidate) -> str:
    s = c.schedule
    if c.role == "full":
        return "full"
    text = f"static {s.min_layers}" if s.min_layers == s.max_layers else f"{s.max_layers}->{s.min_layers}/{s.window}"
    return text + (f" p{s.prompt_depth}" if s.prompt_depth < s.num_layers else "") + (" r" if c.refined else "")
