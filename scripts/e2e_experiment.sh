#!/usr/bin/env bash
# The E2E experiment (evaluation issue): SmolLM2-135M fine-tuned on the E2E dev files under each
# schedule with the same budget (300 steps, batch 16, lr 2e-4, 30 warm-up steps, seed 0), then
# evaluated on the whole test set through ONNX Runtime and the PyTorch reference.
#   bash scripts/e2e_experiment.sh train NAME   # NAME: 3x | 1x | static3x | 2x | 5x | range1-5
#   bash scripts/e2e_experiment.sh eval NAME
# Re-running `train` resumes from the newest checkpoint. About 7 s (3x) to 10 s (1x) per step on
# one core of the 2-core CPU, so a run is 35-50 minutes.
set -euo pipefail
DATA=${DATA:-../shared/data/e2e}
what=$1 name=$2
case $name in
  3x) sched=(--speedup 3 --window 32) ;;
  2x) sched=(--speedup 2 --window 32) ;;
  5x) sched=(--speedup 5 --window 32) ;;
  1x) sched=(--speedup 1) ;;
  static3x) sched=(--max-layers 10 --min-layers 10) ;;   # constant 10 of 30 layers: static dropping at 3x
  range1-5) sched=(--speedup-range 1:5 --window 32) ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
out=runs/e2e-smollm2-$name
if [ "$what" = train ]; then
  resume=(); ls "$out"/checkpoint-* >/dev/null 2>&1 && resume=(--resume)
  skipdecode train --model smollm2-135m --data "$DATA/devset.csv" "$DATA/clean-devel.csv" --out "$out" \
    "${sched[@]}" --batch-size 16 --max-steps 300 --lr 2e-4 --warmup-steps 30 --seed 0 \
    --eval-every 50 --holdout 0.05 --eval-examples 128 --eval-samples 4 --save-every 25 --keep-checkpoints 2 \
    --threads 1 "${resume[@]}"
elif [ "$what" = eval ]; then
  skipdecode export --model "$out/final" --out "build/e2e-$name" --overwrite
  skipdecode eval --export "build/e2e-$name" --data "$DATA/testset_w_refs.csv" --method "$name" --batch-size 32 \
    --out "out/e2e/$name"
  skipdecode eval --model "$out/final" --data "$DATA/testset_w_refs.csv" --method "$name" --batch-size 32 \
    --out "out/e2e/$name-torch"
fi
