#!/usr/bin/env bash
# The levers study (evaluation issue): which training choices close the gap between SkipDecode at 3x
# and full depth on SmolLM2-135M. Every run is the same short budget (100 steps of 8 pairs, lr 2e-4,
# 10 warm-up steps, seed 0) on the E2E dev files with the same held-out MRs (--holdout 0.05, seed 0),
# and is scored on those held-out MRs only (`skipdecode eval --heldout`), never on the test set.
#   bash scripts/e2e_levers.sh train NAME   # NAME: base | warmup3 | window26 | power | narrow | gentle | static | distill
#                                            #       | influence | even | static-influence | prompt15 (issue 16's drop orders, prompt depth)
#                                            #       | static-prompt10 (static dropping whose prompt runs the same 10 layers)
#   bash scripts/e2e_levers.sh eval NAME    # -> out/levers/NAME/report.json
# "More steps" and "the any-budget range model" are read from the main runs (scripts/e2e_experiment.sh):
#   bash scripts/e2e_levers.sh eval-run 1x|3x|static3x|range1-5   # the 300-step models, same held-out MRs
# distill's teacher is the full-depth model of the main experiment (runs/e2e-smollm2-1x/final).
# About 4 s per step on one core of the 2-core CPU: 7 minutes a run.
set -euo pipefail
DATA=${DATA:-../shared/data/e2e}
what=$1 name=$2
sched=(--speedup 3 --window 32)
INFLUENCE=14,13,12,17,15,11,26,9,25,16,3,6,2,7,10,5,8,4,19,18,21,27,20,22,28,23,1,24,29
case $name in
  base) lever=() ;;
  narrow) sched=(--max-layers 13 --min-layers 7 --window 32); lever=() ;;  # 3x with half the decay of 15->5
  gentle) sched=(--max-layers 12 --min-layers 8 --window 26); lever=() ;;  # 10 layers on average over 26 tokens
  static) sched=(--max-layers 10 --min-layers 10); lever=() ;;             # the static baseline at this budget
  warmup3) lever=(--warmup-layers 3) ;;     # the paper uses 1 warm-up layer
  window26) lever=(--window 26) ;;          # the 3x model's held-out outputs average 25.7 tokens (out/levers/run-3x)
  power) lever=(--decay power) ;;
  distill) lever=(--distill-from runs/e2e-smollm2-1x/final --distill-weight 0.5) ;;
  # Issue 16's drop orders. The measured one is block influence 1 - cos(h_in, h_out) of the pretrained
  # model on 64 dev examples' generated tokens, least influential first, printed by
  # `python scripts/block_influence.py --data ../shared/data/e2e/devset.csv` (it drops the deep middle,
  # 14, 13, 12, first; at 10 layers it keeps 0, 1, 20-24 and 27-29 where the paper keeps 0 and 21-29).
  influence) lever=(--drop-order "$INFLUENCE") ;;
  static-influence) sched=(--max-layers 10 --min-layers 10); lever=(--drop-order "$INFLUENCE") ;;
  even) lever=(--drop-order even) ;;        # kept layers evenly spread
  prompt15) lever=(--prompt-layers 15) ;;   # the prompt runs n_0 = 15 layers, not 30: half the prefill
  # static dropping with the prompt at step 0's depth: every token runs the same 10 layers, a 10-layer
  # model, so the prefill is 3x cheaper too (end to end 3x, where a full-depth prompt caps it)
  static-prompt10) sched=(--max-layers 10 --min-layers 10); lever=(--prompt-layers 10) ;;
  1x|3x|static3x|range1-5) lever=() ;;
  *) echo "unknown lever $name" >&2; exit 2 ;;
esac
if [ "$what" = train ]; then
  out=runs/lever-$name
  resume=(); ls "$out"/checkpoint-* >/dev/null 2>&1 && resume=(--resume)
  skipdecode train --model smollm2-135m --data "$DATA/devset.csv" "$DATA/clean-devel.csv" --out "$out" \
    "${sched[@]}" "${lever[@]}" --batch-size 8 --max-steps 100 --lr 2e-4 --warmup-steps 10 --seed 0 \
    --eval-every 100 --holdout 0.05 --eval-examples 128 --eval-samples 2 --save-every 25 --keep-checkpoints 1 \
    --threads 1 "${resume[@]}"
elif [ "$what" = eval ]; then
  OMP_NUM_THREADS=1 skipdecode eval --model "runs/lever-$name/final" --heldout "runs/lever-$name" --method "lever-$name" \
    --batch-size 16 --out "out/levers/$name"
elif [ "$what" = eval-run ]; then   # a main-experiment model on the same held-out MRs (range: at 3x)
  own=(); [ "$name" = range1-5 ] && own=(--speedup 3 --window 32)
  OMP_NUM_THREADS=1 skipdecode eval --model "runs/e2e-smollm2-$name/final" --heldout "runs/e2e-smollm2-$name" "${own[@]}" \
    --method "run-$name" --batch-size 16 --out "out/levers/run-$name"
fi
