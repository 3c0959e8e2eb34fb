"""Where a demo's skip column loses (docs/RESULTS.md, "Names and values the dev files lack"): the
test MRs whose venue the training files never name against those they do, each column's ROUGE-L and
names copied, the run's median logged step time, and how often the training files and the scored
test MRs use each eatType and food.

    python scripts/demo_names.py out/demo out/demo-nv [--data ../shared/data/e2e]
"""

from __future__ import annotations

import argparse
import collections
import statistics
from pathlib import Path

from skipdecode.augment import SWAPPED_ATTRIBUTES, parse_mr
from skipdecode.data import load_examples
from skipdecode.datasets import train_files
from skipdecode.io import read_jsonl


def name_split(full: list[dict], skip: list[dict], seen: set) -> dict[str, dict]:
    """Each column's mean ROUGE-L and count of venue names copied verbatim, over the MRs whose
    name[...] the training files use ("seen names") and over the rest; a part with no MRs is left out.
    ``full`` and ``skip``: one demo's eval rows, in the same input order."""
    parts = {}
    for label, known in (("seen names", True), ("unseen names", False)):
        idx = [i for i, r in enumerate(full) if (dict(parse_mr(r["input"])).get("name") in seen) == known]
        if not idx:
            continue
        part = {"mrs": len(idx)}
        for k, rows in (("full", full), ("skip", skip)):
            part[k] = statistics.mean(rows[i]["rouge_l"] for i in idx)
            part[f"copied_{k}"] = sum(dict(parse_mr(rows[i]["input"])).get("name", "\0") in rows[i]["output"] for i in idx)
        parts[label] = part
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="skipdecode demo --out folders")
    p.add_argument("--data", type=Path, default=Path("../shared/data/e2e"))
    args = p.parse_args()
    train = load_examples(train_files(args.data))
    seen = {dict(parse_mr(e.prompt)).get("name") for e in train}
    for run in args.runs:
        full, skip = (read_jsonl(run / n / "outputs.jsonl") for n in ("full", "skip"))
        steps = [r["step_s"] for r in read_jsonl(run / "train" / "log.jsonl") if r.get("event") == "train"]
        print(f"{run}: median logged step {statistics.median(steps):.2f} s")
        for label, part in name_split(full, skip, seen).items():
            print(f"  {label}: {part['mrs']} MRs, ROUGE-L full {part['full']:.1f} skip {part['skip']:.1f} "
                  f"(gap {part['full'] - part['skip']:.1f}), names copied full {part['copied_full']} "
                  f"skip {part['copied_skip']}")
    test = [r["input"] for r in read_jsonl(args.runs[0] / "full" / "outputs.jsonl")]
    for key in (*SWAPPED_ATTRIBUTES, "near"):
        in_train = collections.Counter(dict(parse_mr(e.prompt)).get(key) for e in train)
        in_test = collections.Counter(dict(parse_mr(m)).get(key) for m in test)
        print(f"{key}: " + ", ".join(f"{v} {in_train[v]} of {len(train)} pairs / {in_test[v] / len(test):.0%} of "
                                     f"{len(test)} test MRs" for v in sorted(in_test, key=str) if v))


if __name__ == "__main__":
    main()
