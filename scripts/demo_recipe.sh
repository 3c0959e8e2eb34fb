#!/usr/bin/env bash
# Which recipe the README's main job (`skipdecode demo`) should use (#16 item 5): short runs on the
# demo's budget, each scored on held-out dev MRs only (never the test set), at full depth and at 3x.
# Every run: SmolLM2-135M, speedups drawn per batch from 1..3 (one checkpoint, both columns), batch
# 16, lr 2e-4, 10% warm-up steps, seed 0, --holdout 0.1 of the E2E dev MRs.
#   bash scripts/demo_recipe.sh train NAME   # NAME: base | prompt15 | even | adapter | ends | ends1 | power | lr4 | b8 | adapter-lr4 | ...
#   bash scripts/demo_recipe.sh eval NAME    # -> out/recipe/NAME-{full,3x,static12}/report.json
#   bash scripts/demo_recipe.sh table        # every report, one line each
# STEPS (default 120) and THREADS (default 2) are environment variables. Re-running `train` resumes.
# Levers that change the optimisation rather than the model: lr4 (lr 4e-4) and b8 (batch 8 for twice
# the steps: the same pairs, twice the updates), each alone or after adapter (adapter-lr4, ...); a
# trailing sN trains seed N instead of 0 (base-s1: the seed-to-seed spread of the same recipe); stN
# trains N steps instead of STEPS (ends-st240).
set -euo pipefail
DATA=${DATA:-../shared/data/e2e}
STEPS=${STEPS:-120}
THREADS=${THREADS:-2}
what=$1 name=${2:-}
if [ "$what" = table ]; then
  python - <<'EOF'
import json
from pathlib import Path
rows = sorted(Path("out/recipe").glob("*/report.json"))
print(f"{'run':28}{'MRs':>5}{'BLEU':>7}{'ROUGE-L':>9}{'realised':>10}{'tokens/out':>11}")
for f in rows:
    r = json.loads(f.read_text())
    print(f"{f.parent.name:28}{r['num_inputs']:>5}{r['bleu']:7.2f}{r['rouge_l']:9.2f}"
          f"{r['layer_speedup']:9.2f}x{r['mean_output_tokens']:11.1f}")
EOF
  exit 0
fi
lr=2e-4 batch=16 steps=$STEPS seed=0 lever=()
for part in ${name//-/ }; do
  case $part in
    base) ;;
    prompt15) lever+=(--prompt-layers 15) ;;   # the prompt runs 15 layers under 3x (n_0), all 30 at 1x
    even) lever+=(--drop-order even) ;;
    adapter) lever+=(--entry-adapter 32) ;;
    ends) lever+=(--range-ends 0.5) ;;         # half the batches at 1x or 3x, the rest uniform in between
    ends1) lever+=(--range-ends 1.0) ;;        # every batch at 1x or 3x, none in between
    power) lever+=(--decay power) ;;           # power-law decay: 3x is 16->7 over 32 steps instead of 15->5
    lr4) lr=4e-4 ;;
    b8) batch=8 steps=$(( STEPS * 2 )) ;;
    st[0-9]*) steps=${part#st} ;;             # st240: 240 steps (what bf16 fits in the demo's time on an AMX host)
    s[0-9]*) seed=${part#s} ;;
    *) echo "unknown recipe $name" >&2; exit 2 ;;
  esac
done
out=runs/recipe-$name
if [ "$what" = train ]; then
  resume=(); ls "$out"/checkpoint-* >/dev/null 2>&1 && resume=(--resume)
  skipdecode train --model smollm2-135m --data "$DATA/devset.csv" "$DATA/clean-devel.csv" --out "$out" \
    --speedup-range 1:3 --window 32 "${lever[@]}" --batch-size $batch --max-steps $steps --lr $lr \
    --warmup-steps $(( steps / 10 )) --seed $seed --holdout 0.1 --eval-every 0 --save-every 20 --keep-checkpoints 1 \
    --threads "$THREADS" --no-progress "${resume[@]}"
elif [ "$what" = eval ]; then
  for s in "full|--speedup 1" "3x|--speedup 3 --window 32" "static12|--max-layers 12 --min-layers 12"; do
    IFS='|' read -r label flags <<< "$s"
    read -ra flags <<< "$flags"
    OMP_NUM_THREADS=$THREADS skipdecode eval --model "$out/final" --heldout "$out" --method "$name-$label" \
      --batch-size 32 "${flags[@]}" --out "out/recipe/$name-$label"
  done
fi
