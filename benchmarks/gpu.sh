#!/usr/bin/env bash
# GPU benchmark on a fresh machine (python3 with torch; no Ray, no tensorboardX, no internet).
# Dense GPT-2-small and MoE 8 experts / top-2 of the same shape, bf16, through our engine and
# through a minimal hand loop over our own model, in the same call: one JSON line per config.
#   bash benchmarks/gpu.sh            (OUT=<dir> keeps a copy of the results)
#   PRESET=cpu-tiny bash benchmarks/gpu.sh   (the same script on CPU, as a smoke run)
#   AUTOTUNE=1 bash benchmarks/gpu.sh        (adds dense with compile_mode=max-autotune: minutes more)
#   DENSE_BATCHES="32 64" bash benchmarks/gpu.sh   (dense at each batch size; default 32)
#   ATTENTION=cudnn bash benchmarks/gpu.sh   (model.attention_backend for every run; default auto)
#   PROFILE=1 bash benchmarks/gpu.sh         (also traces 2 engine steps of each run: $OUT/profile-*/)
# Exits 1 when a correctness check fails or a benchmark printed no line.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PRESET=${PRESET:-gpt2-small}
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
if [ "$PRESET" = "gpt2-small" ]; then
  AMP="--amp bf16 --compile --data-workers 6"; STEPS="--steps 15 --warmup 6"
else
  AMP="--amp bf16 --data-workers 0"; STEPS="--steps 10 --warmup 2"
fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU";
  $PY -c "import torch,sys;print('torch',torch.__version__,'python',sys.version.split()[0])"; } | tee "$OUT/env.txt"
echo "== correctness checks" >&2
timeout 240 $PY benchmarks/gpu_checks.py 2>>"$OUT/err.txt" | tee "$OUT/gpu_checks.jsonl"
n=0
run() {
  n=$((n + 1)); local prof=()
  if [ "${PROFILE:-0}" = "1" ]; then prof=(--profile "$OUT/profile-$n"); fi
  echo "== $*" >&2; timeout 300 $PY benchmarks/engine_overhead.py --preset "$PRESET" --attention "${ATTENTION:-auto}" $AMP $STEPS "${prof[@]}" "$@" 2>>"$OUT/err.txt" | tee -a "$OUT/gpu_bench.jsonl"
  if [ -d "$OUT/profile-$n" ]; then gzip -f "$OUT/profile-$n"/profiler/*.trace.json 2>/dev/null; rm -rf "$OUT/profile-$n"/logs; fi
}
for b in ${DENSE_BATCHES:-32}; do run --batch "$b"; done  # dense
run --moe --experts 8 --top-k 2 --batch 16                # MoE, expert width 4*d
if [ "${AUTOTUNE:-0}" = "1" ]; then run --batch 32 --compile-mode max-autotune; fi
if [ -f benchmarks/moe_bench.py ] && [ "$PRESET" = "gpt2-small" ]; then
  echo "== moe_bench" >&2
  timeout 120 $PY benchmarks/moe_bench.py 2>>"$OUT/err.txt" | tee "$OUT/moe_bench.jsonl"
fi
if [ -s "$OUT/err.txt" ]; then grep -v '^ ' "$OUT/err.txt" | grep -iE 'error|warn' | tail -5 >&2; fi
failed=$(grep -c '"ok": false' "$OUT/gpu_checks.jsonl" 2>/dev/null)
lines=$(grep -c '"ratio"' "$OUT/gpu_bench.jsonl" 2>/dev/null)
if [ "${failed:-0}" != "0" ] || [ "${lines:-0}" != "$n" ]; then  # n: the runs started
  echo "gpu.sh: ${failed:-0} failed checks, ${lines:-0} of $n benchmark lines (see $OUT/err.txt)" >&2; exit 1
fi
