#!/usr/bin/env bash
# vLLM's CPU build against `skipdecode serve`, side by side: the same bench-serve workload sent by
# the same HTTP client (bench-serve --url), one server at a time, in one run on this host.
#
#   bash scripts/vllm_cpu_bench.sh                 # all configurations
#   CONFIGS="vllm-fp32 ours-fp32-1x" bash scripts/vllm_cpu_bench.sh
#
# vLLM lives in its own venv (never a dependency of skipdecode); see docs/SERVING.md,
# "Against vLLM's CPU build". Servers listen on 127.0.0.1 only and are stopped when their
# configuration is done (and on exit). Writes $OUT (default docs/serving/vllm-cpu.json).
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_PY=${VLLM_PY:-/work/vllm-venv/bin/python}
# vLLM's CPU guide preloads tcmalloc (apt: libtcmalloc-minimal4) and Intel OpenMP (in its venv)
VLLM_PRELOAD=${VLLM_PRELOAD-/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:$(dirname "$VLLM_PY")/../lib/libiomp5.so}
HF=${HF:-$HOME/.cache/skipdecode/smollm2-135m}   # the same SmolLM2 checkpoint as an HF folder
EXPORT=${EXPORT:-out/smollm2-fp32}               # our fp32 export of it
# our int8 export of it: skipdecode calibrate out/smollm2-fp32 --out out/smollm2-int8d \
#   --method int8-dynamic --head quantized --data ../shared/data/e2e/devset.csv
EXPORT_INT8=${EXPORT_INT8:-out/smollm2-int8d}
OUT=${OUT:-docs/serving/vllm-cpu.json}
CONFIGS=${CONFIGS:-"vllm-fp32 vllm-bf16 ours-fp32-1x ours-fp32-3x ours-int8-1x ours-int8-3x"}
REQUESTS=${REQUESTS:-24}                         # requests of the saturating run
RATES=${RATES:-0.15,0.3}                         # Poisson rates (req/s), the same for every server
RATES_BF16=${RATES_BF16:-inf}                    # vLLM bf16 (emulated without AVX512-BF16/AMX): peak only
DURATION=${DURATION:-40}                         # seconds of arrivals per rate
WORKLOAD=${WORKLOAD:-chat}                       # chat or e2e (bench-serve's workloads)
PROMPT=${PROMPT:-32,256}
OUTPUT=${OUTPUT:-128,512}
PORT=${PORT:-8123}
TMP=$(mktemp -d)
PID=""

stop() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID"
    for _ in $(seq 60); do kill -0 "$PID" 2>/dev/null || break; sleep 1; done
    kill -0 "$PID" 2>/dev/null && kill -9 "$PID"
  fi
  PID=""
}
trap stop EXIT

wait_ready() {  # bounded: 15 minutes (vLLM compiles on start)
  for _ in $(seq 900); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || { echo "server exited:"; tail -30 "$1"; return 1; }
    sleep 1
  done
  echo "server not ready after 900 s"; tail -30 "$1"; return 1
}

for cfg in $CONFIGS; do
  log=$TMP/$cfg.log
  case $cfg in
    vllm-fp32|vllm-bf16)
      dtype=$([ "$cfg" = vllm-fp32 ] && echo float32 || echo bfloat16)
      LD_PRELOAD=$VLLM_PRELOAD VLLM_CPU_KVCACHE_SPACE=4 VLLM_CPU_OMP_THREADS_BIND=0-1 OMP_NUM_THREADS=2 \
        "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$HF" --served-model-name smollm2-135m \
        --host 127.0.0.1 --port "$PORT" --dtype "$dtype" >"$log" 2>&1 &
      PID=$! ;;
    ours-fp32-*|ours-int8-*)
      speedup=${cfg##*-}; speedup=${speedup%x}
      export_dir=$([ "${cfg:5:4}" = int8 ] && echo "$EXPORT_INT8" || echo "$EXPORT")
      python -m skipdecode.cli.main serve "$export_dir" --host 127.0.0.1 --port "$PORT" --max-batch 32 \
        --speedup "$speedup" --log-level warning >"$log" 2>&1 &
      PID=$! ;;
    *) echo "unknown configuration $cfg"; exit 2 ;;
  esac
  started=$(date +%s)
  wait_ready "$log"
  echo "$cfg ready after $(( $(date +%s) - started )) s"
  python -m skipdecode.cli.main bench-serve --url "http://127.0.0.1:$PORT/v1" --tokenizer "$EXPORT" \
    --label "$cfg" --workload "$WORKLOAD" --prompt-tokens "$PROMPT" --output-tokens "$OUTPUT" --requests "$REQUESTS" \
    --rates "$([ "$cfg" = vllm-bf16 ] && echo "$RATES_BF16" || echo "$RATES")" --duration "$DURATION" --json "$TMP/$cfg.json"
  stop
done

python - "$OUT" "$TMP" $CONFIGS <<'EOF'
import json, sys
from pathlib import Path
out, tmp, configs = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
parts = {c: json.loads((tmp / f"{c}.json").read_text()) for c in configs}
first = parts[configs[0]]
report = {"machine": first["machine"], "settings": first["settings"],
          "configs": {c: {"model": p["model"], "machine_load": [p["machine"]["loadavg_1m"], p["machine"]["loadavg_1m_end"]],
                          "records": p["records"]} for c, p in parts.items()}}
Path(out).parent.mkdir(parents=True, exist_ok=True)
peak = {c: next(r["output_tokens_per_s"] for r in p["records"] if r["rate"] == float("inf")) for c, p in parts.items()}
vllm = {c: v for c, v in peak.items() if c.startswith("vllm")}
ratios = {}
for c in [c for c in peak if c.startswith("ours-") and c.endswith("-3x")] if vllm else []:
    ratios[f"{c} / vllm best (target >= 1.5)"] = round(peak[c] / max(vllm.values()), 3)
for c in [c for c in peak if c.startswith("ours-") and c.endswith("-1x")] if "vllm-fp32" in peak else []:
    ratios[f"{c} / vllm-fp32 (target >= 1.0 for fp32)"] = round(peak[c] / peak["vllm-fp32"], 3)
report["peak_output_tokens_per_s"], report["ratios"] = peak, ratios
Path(out).write_text(json.dumps(report, indent=1))
sys.path.insert(0, ".")
from skipdecode.runtime.serve_bench import ServeRecord, records_table
nan = float("nan")
print(records_table([ServeRecord(**{k: nan if v is None else v for k, v in r.items()})
                     for p in parts.values() for r in p["records"]]))
print(json.dumps(ratios, indent=1))
print(f"wrote {out}")
EOF
