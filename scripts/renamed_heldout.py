"""The demo's held-out dev MRs with made-up venue names: a dev slice that asks for names never seen
in training, as the E2E test set does (76 of the demo's first 128 test MRs name venues the dev
files never do), without touching the test set.

    python scripts/renamed_heldout.py --data ../shared/data/e2e --seeds 3 --out out/renamed-heldout.csv
    python scripts/renamed_heldout.py --seeds 3 --swap-values --out out/swapped-heldout.csv
    skipdecode eval --model out/demo/train/final --data out/renamed-heldout.csv --speedup 3 --window 32 ...

Each seed renames every held-out MR once (skipdecode/augment.py: ``rename_groups``), so the file
holds each MR under ``--seeds`` different made-up names, every reference renamed alike.
``--swap-values`` also swaps eatType and food for other values of the demo's training pairs where
every reference of the MR states them verbatim: the dev files are nearly all coffee shops serving
Chinese or English food, while the test set is not.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from skipdecode.augment import attribute_values, rename_groups
from skipdecode.pipeline import demo_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/e2e", help="E2E folder with devset.csv and clean-devel.csv")
    p.add_argument("--seeds", type=int, default=3, help="renamings of each held-out MR (default 3)")
    p.add_argument("--swap-values", action="store_true", help="also swap eatType and food (see above)")
    p.add_argument("--out", type=Path, required=True, help="E2E CSV to write (columns mr, ref)")
    args = p.parse_args()
    train, held = demo_split(Path(args.data))
    values = attribute_values(train) if args.swap_values else None
    rows = [(e.prompt.strip(), e.target) for seed in range(args.seeds) for e in rename_groups(held, seed, values)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("mr", "ref"), *rows])
    print(f"{args.out}: {len(rows)} pairs, {len({r[0] for r in rows})} distinct MRs")


if __name__ == "__main__":
    main()
