"""Collect the E2E experiment (scripts/e2e_experiment.sh) into docs/results/e2e.json, a markdown
table for docs/RESULTS.md and the quality-vs-speedup plot.

    python scripts/e2e_results.py [--reports out/e2e] [--bench out/e2e-bench]
                                  [--json docs/results/e2e.json] [--plot docs/results/e2e.png]
                                  [--tag=-s1200]

Records already in --json whose report is not collected this time (an earlier budget's, scored in
another session) are kept; a collected report replaces its record. --tag picks the budget the
paired intervals compare (-s1200: STEPS=1200 bash scripts/e2e_experiment.sh) and the plot's reports;
-s1200-best compares the runs' best/ checkpoints (lowest held-out dev loss, CKPT=best ... eval NAME).

One record per model and schedule, scored through ONNX Runtime, with the PyTorch reference's
scores on the same schedule beside it and the share of test rows whose greedy token ids are
identical between the two. tokens/s come from `skipdecode bench` (batch 1 and 32, 32-token prompts,
32 new tokens) of the same schedule: speed depends on the schedule, not on the weights.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from skipdecode.evaluation.compare import paired_bootstrap, plot  # noqa: E402
from skipdecode.evaluation.report import load_report  # noqa: E402
from skipdecode.io import atomic_write_text, read_jsonl  # noqa: E402

LABELS = {"full": "full depth (1x model)", "skipdecode": "SkipDecode, one model per target",
          "skipdecode-w26": "SkipDecode 3x model, 26-step window", "static": "static dropping, 10 layers",
          "range": "SkipDecode any-budget model (1:5)", "range-static": "any-budget model, static 10 layers",
          "skipdecode-pd": "SkipDecode 3x, power decay + distillation", "static-d": "static 10 layers + distillation",
          "full-aug": "full depth, names and values augmented", "skipdecode-aug": "SkipDecode, names and values augmented",
          "static-aug": "static 10 layers, names and values augmented"}
"""Plot legend per eval --method label."""


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def outputs(folder: Path) -> list[dict]:
    """An eval --out folder's rows (input, output, token_ids, rouge_l, ...), in input order."""
    return read_jsonl(folder / "outputs.jsonl")


def names_copied(rows: list[dict]) -> float | None:
    """Share of the MRs' name[...] and near[...] values that the outputs contain verbatim: the
    error reduced-depth models make most (copying a name from the prompt)."""
    hit = total = 0
    for row in rows:
        attrs = dict(re.findall(r"(\w+)\[([^\]]*)\]", row["input"]))
        for key in ("name", "near"):
            if key in attrs:
                total += 1
                hit += attrs[key] in row["output"]
    return round(hit / total, 4) if total else None


def bench_speeds(folder: Path) -> dict[tuple[str, int], float]:
    """(schedule description, batch size) -> decode tokens/s over every bench JSON in ``folder``;
    the median where several runs measured it (each run measures full depth too)."""
    seen: dict[tuple[str, int], list[float]] = {}
    for file in sorted(folder.glob("*.json")):
        for r in load(file)["records"]:
            seen.setdefault((r["schedule"], r["batch_size"]), []).append(r["tokens_per_s"])
    return {k: statistics.median(v) for k, v in seen.items()}


def collect(reports: Path, bench: Path) -> list[dict]:
    speeds = bench_speeds(bench) if bench.is_dir() else {}
    records = []
    for folder in sorted(p for p in reports.iterdir() if (p / "report.json").exists() and not p.name.endswith("-torch")):
        r = load(folder / "report.json")
        torch_dir = folder.with_name(folder.name + "-torch")
        t = load(torch_dir / "report.json") if (torch_dir / "report.json").exists() else None
        rows, same = outputs(folder), None
        if t is not None:
            ref = outputs(torch_dir)
            if len(rows) == len(ref):
                same = round(sum(x["token_ids"] == y["token_ids"] for x, y in zip(rows, ref)) / len(rows), 4)
        training = (t or {}).get("training") or {}
        if training.get("step") is None and r.get("export"):  # ONNX Runtime only: the export's own record
            info = Path(r["export"]) / "skipdecode.json"
            training = load(info) if info.exists() else training
        sched = r["schedule_description"]
        order = r["schedule"].get("drop_order")
        records.append({
            "model": folder.name.split("-s")[0].split("-w")[0], "method": r["method"],
            "target_speedup": r["target_speedup"], "layer_speedup": r["layer_speedup"],
            "bleu": r["bleu"], "rouge_l": r["rouge_l"], "backend": r["backend"],
            "tokens_per_s_b1": speeds.get((sched, 1)), "tokens_per_s_b32": speeds.get((sched, 32)),
            "steps": training.get("step"), "schedule": sched, "mean_output_tokens": r["mean_output_tokens"],
            "torch_bleu": t["bleu"] if t else None, "torch_rouge_l": t["rouge_l"] if t else None,
            "same_ids_as_torch": same, "names_copied": names_copied(rows), "num_inputs": r["num_inputs"], "report": str(folder / "report.json"),
            "drop_order": "paper" if order is None else ",".join(map(str, order)),
            "prompt_layers": r["schedule"].get("prompt_layers") or r["schedule"]["num_layers"],
            "checkpoint": "best" if name_tag(folder.name).endswith("-best") else "final",
        })
    return sorted(records, key=lambda x: (x["model"], x["layer_speedup"]))


def with_steps(records: list[dict]) -> list[dict]:
    """``records`` whose training step is unknown (only a PyTorch reference's report names it, and
    some schedules are scored through ONNX Runtime alone) take it from a record of the same model,
    budget and checkpoint that knows it."""
    known = {(r["model"], budget_tag(r["report"])): r["steps"] for r in records if r["steps"] is not None}
    return [{**r, "steps": known.get((r["model"], budget_tag(r["report"])))} if r["steps"] is None else r
            for r in records]


def name_tag(name: str) -> str:
    """The STEPS tag in an eval or run folder's name ("3x-s1200-w26" -> "-s1200", a best/ checkpoint's
    "3x-s1200-best" -> "-s1200-best"; 300-step runs have none: "range1-5-s3"'s "-s3" is the speedup
    it is scored at)."""
    m = re.search(r"-s\d{3,}(?:-best)?", name)
    return m.group(0) if m else ""


def budget_tag(report: str) -> str:
    """The STEPS tag of a report.json, from its folder's name."""
    return name_tag(Path(report).parent.name)


def num_layers(schedule: str) -> int:
    """The model's depth from a record's schedule description.

    >>> num_layers("linear 15->5/30 layers over 32 steps (warm-up 1), speedup 3.00x"), num_layers("full depth (30 layers)")
    (30, 30)
    """
    return int(re.search(r"(\d+) layers", schedule).group(1))


def merged(new: list[dict], old_json: Path) -> list[dict]:
    """``new`` plus the records of ``old_json`` whose report was not collected now (older budgets);
    those gain the fields added since (drop_order, prompt_layers, checkpoint) at their defaults, and
    a record without its training step takes it from its run's other records (``with_steps``)."""
    old = load(old_json) if old_json.exists() else []
    seen = {r["report"] for r in new}
    kept = [{"drop_order": "paper",  # a record from before prompt depth: its prompt ran every layer
             "prompt_layers": r["prompt_layers"] if "prompt_layers" in r else num_layers(r["schedule"]),
             "checkpoint": "final", **r} for r in old if r["report"] not in seen]
    return sorted(with_steps(kept + new), key=lambda x: (x.get("steps") or 0, x["model"], x["layer_speedup"]))


def table(records: list[dict]) -> str:
    def f(v, fmt, suffix=""):
        return "-" if v is None else format(v, fmt) + suffix

    lines = ["| model | steps | scored as | schedule | realised speedup | BLEU | ROUGE-L | PyTorch BLEU / ROUGE-L | "
             "same ids as PyTorch | names copied | tok/s B=1 | tok/s B=32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in records:
        lines.append(f"| {x['model']} | {f(x['steps'], 'd')} | {x['method']} | {x['schedule']} | {f(x['layer_speedup'], '.2f', 'x')} | "
                     f"{x['bleu']:.2f} | {x['rouge_l']:.2f} | {f(x['torch_bleu'], '.2f')} / {f(x['torch_rouge_l'], '.2f')} | "
                     f"{f(x['same_ids_as_torch'] and 100 * x['same_ids_as_torch'], '.1f', '%')} | "
                     f"{f(x['names_copied'] and 100 * x['names_copied'], '.1f', '%')} | "
                     f"{f(x['tokens_per_s_b1'], '.1f')} | {f(x['tokens_per_s_b32'], '.1f')} |")
    return "\n".join(lines) + "\n"


PAIRS = [("1x", "2x"), ("1x", "3x"), ("1x", "5x"), ("static3x", "3x"), ("range1-5-s3", "3x"), ("2x", "range1-5-s2"),
         ("3x-pd", "3x"), ("static3x-d", "static3x"), ("static3x-d", "3x-pd"),
         ("1x", "3x-adapter"), ("3x-adapter", "3x"), ("static3x", "3x-adapter"), ("1x", "static3x"), ("1x", "3x-pd"),
         ("static3x-bf16", "3x-bf16"), ("1x-bf16", "3x-bf16"), ("1x-bf16", "static3x-bf16"),
         ("1x-aug", "2x-aug"), ("1x-aug", "3x-aug"), ("static3x-aug", "3x-aug"), ("1x-aug", "static3x-aug"), ("3x-aug", "3x"),
         ("1x-aug", "1x")]
"""Comparisons given a confidence interval (eval --out folder names under --reports, before the
budget's tag: 3x is 3x-s1200 with --tag=-s1200)."""


def paired(reports: Path, a: str, b: str) -> tuple[float, float, float] | None:
    """ROUGE-L of ``a`` minus ``b`` with a 95% paired-bootstrap interval over the test MRs (as
    `skipdecode compare --paired`); None when either report is missing."""
    if not all((reports / n / "outputs.jsonl").exists() for n in (a, b)):
        return None
    return paired_bootstrap(outputs(reports / a), outputs(reports / b))


def intervals(reports: Path, tag: str = "") -> str:
    lines = ["| ROUGE-L of | minus | difference | 95% interval (paired bootstrap over MRs) |", "|---|---|---|---|"]
    for a, b in PAIRS:
        a, b = a + tag, b + tag
        r = paired(reports, a, b)
        if r is not None:
            lines.append(f"| {a} | {b} | {r[0]:+.2f} | [{r[1]:+.2f}, {r[2]:+.2f}] |")
    return "\n".join(lines) + "\n"


THREE_X = (2.8, 3.0)
"""Issue 16's band of realised speedup in which "3x" schedules are compared."""


def targets(reports: Path, tag: str) -> str:
    """Issue 16's quality targets for the budget ``tag`` from the eval folders present (a target
    whose reports are missing is left out): 2x within 1.0 ROUGE-L of 1x; the best schedule realising
    2.8-3.0x within 2.0 of 1x; the best decaying schedule in that band at or above static dropping
    (static3x), with 95% paired-bootstrap intervals."""
    def report(name):
        path = reports / name / "report.json"
        return load(path) if path.exists() else None

    full, lines = report("1x" + tag), []
    band = {}
    for folder in sorted(reports.glob(f"*{tag}*")):
        r = report(folder.name)
        if r is not None and name_tag(folder.name) == tag and not folder.name.endswith("-torch") \
                and THREE_X[0] <= r["layer_speedup"] <= THREE_X[1] + 1e-9:
            band[folder.name] = r
    if full is not None and report("2x" + tag) is not None:
        d, lo, hi = paired(reports, "1x" + tag, "2x" + tag)
        lines.append(f"| 2x within 1.0 of 1x | 1x minus 2x{tag}: {d:+.2f} [{lo:+.2f}, {hi:+.2f}] | {'yes' if d <= 1.0 else 'no'} |")
    if full is not None and band:
        best = max(band, key=lambda n: band[n]["rouge_l"])
        d, lo, hi = paired(reports, "1x" + tag, best)
        lines.append(f"| best at {THREE_X[0]}-{THREE_X[1]}x within 2.0 of 1x | 1x minus {best} "
                     f"({band[best]['layer_speedup']:.2f}x): {d:+.2f} [{lo:+.2f}, {hi:+.2f}] | {'yes' if d <= 2.0 else 'no'} |")
    decaying = {n: r for n, r in band.items() if r["schedule"]["max_layers"] > r["schedule"]["min_layers"]}
    static = "static3x" + tag
    if decaying and static in band:
        best = max(decaying, key=lambda n: decaying[n]["rouge_l"])
        d, lo, hi = paired(reports, best, static)
        lines.append(f"| decay at or above static | {best} ({decaying[best]['layer_speedup']:.2f}x) minus {static} "
                     f"({band[static]['layer_speedup']:.2f}x): {d:+.2f} [{lo:+.2f}, {hi:+.2f}] | {'yes' if d >= 0 else 'no'} |")
    if not lines:
        return ""
    return "\n".join(["| target (issue 16) | measured, ROUGE-L [95% interval] | met |", "|---|---|---|", *lines]) + "\n"


def levers(folder: Path, runs: Path) -> str:
    """The levers study (scripts/e2e_levers.sh): each model on the held-out dev MRs, with its final
    dev loss (under its own schedule) from the training log."""
    lines = ["| model | steps x batch | schedule | realised speedup | dev BLEU | dev ROUGE-L | dev loss |",
             "|---|---|---|---|---|---|---|"]
    for rep in sorted(folder.glob("*/report.json")):
        r = load(rep)
        name = rep.parent.name
        run = runs / (f"e2e-smollm2-{name[4:]}" if name.startswith("run-") else f"lever-{name}")
        evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"eval"' in line] \
            if (run / "log.jsonl").exists() else []
        last = evals[-1] if evals else {}
        batch = 16 if name.startswith("run-") else 8
        loss = f"{last['dev_loss']:.3f}" if last else "-"
        lines.append(f"| {name} | {last.get('step', '-')} x {batch} | {r['schedule_description']} | "
                     f"{r['layer_speedup']:.2f}x | {r['bleu']:.2f} | {r['rouge_l']:.2f} | {loss} |")
    return "\n".join(lines) + "\n"


def curves(runs: Path, tag: str) -> str:
    """Held-out dev loss per evaluation step of every run of the budget ``tag`` (its log.jsonl),
    one column per run: where a longer budget stops paying."""
    logs = {}
    for run in sorted(runs.glob(f"e2e-smollm2-*{tag}")):
        if name_tag(run.name) == tag and (run / "log.jsonl").exists():
            logs[run.name[len("e2e-smollm2-"):len(run.name) - len(tag)]] = {
                r["step"]: r["dev_loss"] for r in read_jsonl(run / "log.jsonl") if r.get("event") == "eval"}
    if not logs:
        return ""
    steps = sorted({k for v in logs.values() for k in v})
    lines = ["| step | " + " | ".join(logs) + " |", "|---" * (len(logs) + 1) + "|"]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(f"{v[step]:.3f}" if step in v else "-" for v in logs.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reports", default="out/e2e", help="eval --out folders (NAME and NAME-torch)")
    p.add_argument("--bench", default="out/e2e-bench", help="bench --json files")
    p.add_argument("--json", default="docs/results/e2e.json")
    p.add_argument("--plot", default="docs/results/e2e.png")
    p.add_argument("--levers", default="out/levers", help="the levers study's eval --out folders")
    p.add_argument("--tag", default="", help="the budget compared and plotted: '' (300 steps) or =-s1200 (--tag=-s1200)")
    args = p.parse_args(argv)
    reports = Path(args.reports)
    if not reports.is_dir():
        print(f"e2e_results: {reports}: no such folder (run scripts/e2e_experiment.sh eval NAME)", file=sys.stderr)
        return 2
    records = collect(reports, Path(args.bench))
    if not records:
        print(f"e2e_results: {reports}: no report.json", file=sys.stderr)
        return 2
    every = merged(records, Path(args.json))
    atomic_write_text(args.json, json.dumps(every, indent=2) + "\n")
    loaded = [load_report(r["report"]) for r in records if budget_tag(r["report"]) == args.tag]
    if loaded:
        plot([{**r, "method": LABELS.get(r["method"], r["method"])} for r in loaded], args.plot)
    print(table(every), end="")
    print("\n" + intervals(reports, args.tag), end="")
    goals = targets(reports, args.tag)
    if goals:
        print("\n" + goals, end="")
    curve = curves(ROOT / "runs", args.tag.removesuffix("-best"))  # a run's curve covers both checkpoints
    if curve:
        print(f"\nHeld-out dev loss during training ({args.tag or '300 steps'}):\n")
        print(curve, end="")
    if Path(args.levers).is_dir():
        print("\nLevers, on the held-out dev MRs:\n")
        print(levers(Path(args.levers), ROOT / "runs"), end="")
    print(f"e2e_results: wrote {args.json} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
