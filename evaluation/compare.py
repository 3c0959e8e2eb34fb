"""Several evaluation reports side by side: a markdown table and a quality-vs-speedup plot.

Every comparison is at *realised* speedup (what the schedule gave on the outputs the model
actually wrote), not the target: E2E outputs end inside a 32-48 step window, so a 3x target
realises less. The measured speedup is tokens/s over the full-depth report's tokens/s of the
same backend, device and batch size, where one is among the reports.
"""

from __future__ import annotations

from pathlib import Path

from skipdecode.errors import SkipDecodeError


def _key(r: dict) -> tuple:
    return (r["backend"], r.get("device", "cpu"), r.get("batch_size"))


def add_measured_speedup(reports: list[dict]) -> list[dict]:
    """Copies of the reports with ``measured_speedup`` (tokens/s end to end over the full-depth
    report's) and ``decode_speedup`` (the same for decode-only tokens/s, reports that have it);
    None where no full-depth baseline exists."""
    out = [dict(r) for r in reports]
    for field, name in (("tokens_per_s", "measured_speedup"), ("decode_tokens_per_s", "decode_speedup")):
        base = {}
        for r in reports:
            if r["method"] == "full" and (r.get(field) or 0) > 0:
                base.setdefault(_key(r), r[field])
        for r, o in zip(reports, out):
            b = base.get(_key(r))
            o[name] = round(r[field] / b, 3) if b and r.get(field) is not None else None
    return out


def _label(r: dict, several_backends: bool) -> str:
    return f"{r['method']} ({r['backend']})" if several_backends else r["method"]


def _steps(r: dict) -> int | None:
    """Training steps of the evaluated checkpoint (its skipdecode.json records ``step``)."""
    training = r.get("training") or {}
    return training.get("steps", training.get("step"))


def summary_records(reports: list[dict]) -> list[dict]:
    """One flat record per report (the fields docs/results/e2e.json keeps), sorted for reading."""
    rows = []
    for r in add_measured_speedup(reports):
        rows.append({
            "method": r["method"], "backend": r["backend"], "target_speedup": r["target_speedup"],
            "layer_speedup": r["layer_speedup"], "measured_speedup": r["measured_speedup"],
            "decode_speedup": r["decode_speedup"],
            "bleu": r["bleu"], "rouge_l": r["rouge_l"], "tokens_per_s": r["tokens_per_s"],
            "batch_size": r.get("batch_size"), "num_inputs": r.get("num_inputs"),
            "steps": _steps(r), "model": r.get("model") or r.get("export"),
            "report": r.get("_path"),
        })
    return sorted(rows, key=lambda x: (x["method"] != "full", x["method"], x["backend"], x["layer_speedup"]))


def markdown_table(records: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    def x_(v):
        return "-" if v is None else f"{v:.2f}x"

    lines = ["| method | backend | target | realised layer speedup | measured speedup | decode speedup | BLEU | "
             "ROUGE-L | tokens/s | batch | inputs | report |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for x in records:
        lines.append(f"| {x['method']} | {x['backend']} | {f(x['target_speedup'], '.2f')}x | "
                     f"{f(x['layer_speedup'], '.2f')}x | {x_(x['measured_speedup'])} | {x_(x['decode_speedup'])} | "
                     f"{f(x['bleu'], '.2f')} | "
                     f"{f(x['rouge_l'], '.2f')} | {f(x['tokens_per_s'], '.1f')} | {f(x['batch_size'], 'd')} | "
                     f"{f(x['num_inputs'], 'd')} | {x['report'] or '-'} |")
    return "\n".join(lines) + "\n"


def mismatches(reports: list[dict]) -> list[str]:
    """Warnings when the reports were not scored on the same inputs."""
    notes = []
    for field in ("data", "num_inputs", "max_new_tokens"):
        values = {str(r.get(field)) for r in reports}
        if len(values) > 1:
            notes.append(f"reports differ in {field}: {', '.join(sorted(values))}")
    return notes


def load_outputs(report: dict) -> list[dict]:
    """The per-input rows (``outputs.jsonl``) beside a loaded report."""
    from skipdecode.io import read_jsonl

    path = Path(report["_path"]).with_name("outputs.jsonl")
    if not path.is_file():
        raise SkipDecodeError(f"{path}: no outputs.jsonl beside the report (--paired needs per-input scores)")
    return read_jsonl(path)


def paired_bootstrap(a: list[dict], b: list[dict], metric: str = "rouge_l", resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Corpus ``metric`` of ``a`` minus ``b`` (the mean over inputs of each input's score, as
    ROUGE-L's corpus figure is) with a 95% paired-bootstrap interval: inputs are resampled with
    replacement, the same draw for both, so an interval clear of 0 is a difference the test set
    supports (not one a different draw of inputs would erase).

    >>> a = [{"input": str(i), "rouge_l": 50.0 + (i % 2)} for i in range(100)]
    >>> b = [{"input": str(i), "rouge_l": 50.0} for i in range(100)]
    >>> [round(v, 2) for v in paired_bootstrap(a, b)]
    [0.5, 0.4, 0.6]
    """
    import numpy as np

    if [r["input"] for r in a] != [r["input"] for r in b]:
        raise SkipDecodeError("the two reports were not scored on the same inputs in the same order")
    d = np.array([x[metric] - y[metric] for x, y in zip(a, b)])  # (N,)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)  # (resamples,)
    return float(d.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def plot(reports: list[dict], path: str | Path, x: str = "layer") -> Path:
    """ROUGE-L and BLEU against speedup, one curve per method (per backend if several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkeys = {"layer": "layer_speedup", "measured": "measured_speedup", "decode": "decode_speedup"}
    if x not in xkeys:
        raise ValueError(f"x must be one of {', '.join(xkeys)}, got {x!r}")
    records = summary_records(reports)
    xkey = xkeys[x]
    if x != "layer" and all(r[xkey] is None for r in records):
        raise SkipDecodeError(f"--x {x} needs a full-depth report (method full) of the same backend and batch"
                              + (" with decode-only tokens/s (eval writes it since report version 2)" if x == "decode"
                                 else ""))
    several = len({r["backend"] for r in records}) > 1
    curves: dict[str, list[dict]] = {}
    for r in records:
        if r[xkey] is not None:
            curves.setdefault(_label(r, several), []).append(r)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), constrained_layout=True)
    cmap = plt.get_cmap("tab10")
    for ax, metric, title in zip(axes, ("rouge_l", "bleu"), ("ROUGE-L", "BLEU")):
        for i, (label, pts) in enumerate(sorted(curves.items())):
            pts = sorted(pts, key=lambda p: p[xkey])
            xs, ys = [p[xkey] for p in pts], [p[metric] for p in pts]
            full = label.startswith("full")
            ax.plot(xs, ys, marker="*" if full else "o", markersize=13 if full else 7, color=cmap(i % 10),
                    linestyle="none" if len(pts) == 1 else "-", label=label)
            if full:
                for xv, yv in zip(xs, ys):
                    ax.axhline(yv, color=cmap(i % 10), linestyle=":", linewidth=1, alpha=0.7)
            for p in pts:
                if not full:
                    ax.annotate(f"{p['target_speedup']:g}x", (p[xkey], p[metric]), textcoords="offset points",
                                xytext=(5, 5), fontsize=8, color=cmap(i % 10))
        ax.margins(x=0.08, y=0.1)  # room for the speedup labels at the edges
        ax.set_title(title)
        ax.set_xlabel({"layer": "realised layer speedup (L / mean layers run)",
                       "measured": "measured speedup (tokens/s over full depth)",
                       "decode": "measured decode speedup (decode-only tokens/s over full depth)"}[x])
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="best", fontsize=9)
    data = {Path(str(r.get("data"))).name for r in reports}
    fig.suptitle(f"Quality vs speedup on {', '.join(sorted(data))} (labels: target speedup)", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
