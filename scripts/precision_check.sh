#!/usr/bin/env bash
# Issue 16 item 1: is bf16 autocast training within noise of fp32? Four 100-step runs of the 1x
# recipe (batch 16, lr 2e-4, 10 warm-up steps), fp32 and bf16 with seeds 0 and 1, all scored every
# 10 steps on the same held-out MRs (5% of the dev files' MRs, split once with seed 0, so only the
# data order and precision differ between runs). The seed-to-seed spread of fp32 is the noise that
# bf16's difference is read against. Each run's median step time is in its log.jsonl.
#   bash scripts/precision_check.sh split            # runs/precision/{train,held}.csv
#   bash scripts/precision_check.sh train fp32 0     # runs/precision/fp32-s0 (then bf16 0, fp32 1, bf16 1)
#   python scripts/precision_check.py runs/precision # the curves side by side, differences, step times
# About 10 s (fp32) and 5-6 s (bf16) a step on one thread of an AMX Xeon: two runs side by side
# take about 25 min. The held-out loss is over the first 256 held-out pairs.
set -euo pipefail
DATA=${DATA:-../shared/data/e2e}
root=runs/precision
what=$1
if [ "$what" = split ]; then
  mkdir -p $root
  python - "$DATA" "$root" <<'PY'
import csv, sys
from pathlib import Path
from skipdecode.data import load_examples, split_heldout
from skipdecode.datasets import train_files
data, root = Path(sys.argv[1]), Path(sys.argv[2])
train, held = split_heldout(load_examples(train_files(data)), 0.05, seed=0)
for name, rows in (("train", train), ("held", held)):
    with open(root / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["mr", "ref", "orig_mr"])
        w.writerows([ex.prompt.strip(), ex.target, ex.group] for ex in rows)
    print(f"{root}/{name}.csv: {len(rows)} pairs, {len({ex.group for ex in rows})} MRs")
PY
elif [ "$what" = train ]; then
  prec=$2 seed=$3 out=$root/$2-s$3
  [ "$prec" = fp32 ] && mp=no || mp=$prec
  resume=(); ls "$out"/checkpoint-* >/dev/null 2>&1 && resume=(--resume)
  skipdecode train --model smollm2-135m --data $root/train.csv --eval-data $root/held.csv --out "$out" \
    --speedup 1 --batch-size 16 --max-steps 100 --lr 2e-4 --warmup-steps 10 --seed "$seed" \
    --eval-every 10 --save-every 50 --eval-examples 256 --eval-samples 0 --keep-checkpoints 1 \
    --mixed-precision "$mp" --threads 1 "${resume[@]}"
else
  echo "usage: $0 split | train fp32|bf16 SEED" >&2; exit 2
fi
