#!/usr/bin/env bash
# GPU benchmark on a fresh machine (python3 with torch; no Ray, no tensorboardX, no internet).
# Dense GPT-2-small and MoE 8 experts / top-2 of the same shape, bf16, through our engine and
# through a minimal hand loop over our own model, in the same call: one JSON line per config.
#   bash benchmarks/gpu.sh            (OUT=<dir> keeps a copy of the results)
#   PRESET=cpu-tiny bash benchmarks/gpu.sh   (the same script on CPU, as a smoke run)
#   AUTOTUNE=1 bash benchmarks/gpu.sh        (adds dense with compile_mode=max-autotune-no-cudagraphs: minutes more)
#   DENSE_BATCHES="32 64" bash benchmarks/gpu.sh   (dense at each batch size; default 64)
#   ATTENTION=cudnn bash benchmarks/gpu.sh   (model.attention_backend for every run; default auto)
#   PROFILE=1 bash benchmarks/gpu.sh         (also traces 2 engine steps of each run: $OUT/profile-*/)
#   RUNS="dense:32 dense:32:cudnn moe:16 dense:64:cudnn:max-autotune:profile" bash benchmarks/gpu.sh
#       (the runs themselves, in order: model:batch[:attention[:compile_mode[:profile]]]; replaces
#        the four variables above)
#   CHECKS=0 / MOE_BENCH=0                   (skip the correctness checks / the MoE layer timing)
#   REPEATS=2                                (hand/engine pairs per run, best of each; default 1)
# Each step runs under its own `timeout` and prints its line as soon as it is done, so a call
# cut short keeps what finished. Exits 1 when a check fails or a benchmark printed no line.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PRESET=${PRESET:-gpt2-small}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "$PRESET" = "gpt2-small" ]; then
  AMP="--amp bf16 --compile --data-workers 6"; STEPS="--steps 15 --warmup 6"
else
  AMP="--amp bf16 --data-workers 0"; STEPS="--steps 10 --warmup 2"
fi
if [ -z "${RUNS:-}" ]; then
  att=${ATTENTION:-auto}; prof=""; if [ "${PROFILE:-0}" = "1" ]; then prof=":profile"; fi
  RUNS=""
  for b in ${DENSE_BATCHES:-64}; do RUNS="$RUNS dense:$b:$att:default$prof"; done
  RUNS="$RUNS moe:16:$att:default$prof"  # MoE, expert width 4*d
  if [ "${AUTOTUNE:-0}" = "1" ]; then RUNS="$RUNS dense:64:$att:max-autotune-no-cudagraphs$prof"; fi
fi
stage() { echo "== [${SECONDS}s] $*" >&2; }
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU";
  $PY -c "import torch,sys;print('torch',torch.__version__,'python',sys.version.split()[0])"; } | tee "$OUT/env.txt"
: >"$OUT/gpu_checks.jsonl"; : >"$OUT/gpu_bench.jsonl"  # this call's lines only, also in a reused OUT
if [ "${CHECKS:-1}" = "1" ]; then
  stage "correctness checks"
  timeout 240 $PY benchmarks/gpu_checks.py 2>>"$OUT/err.txt" | tee "$OUT/gpu_checks.jsonl"
fi
n=0
for spec in $RUNS; do
  IFS=: read -r model batch attention mode profile <<<"$spec"
  if [ "$model" != "dense" ] && [ "$model" != "moe" ]; then echo "gpu.sh: RUNS: $spec: the model is dense or moe" >&2; exit 2; fi
  n=$((n + 1)); args=(--repeats "${REPEATS:-1}" --batch "$batch" --attention "${attention:-auto}" --compile-mode "${mode:-default}")
  if [ "$model" = "moe" ]; then args+=(--moe --experts 8 --top-k 2); fi
  if [ "${profile:-}" = "profile" ]; then args+=(--profile "$OUT/profile-$n"); fi
  stage "run $n: $spec"
  timeout 300 $PY benchmarks/engine_overhead.py --preset "$PRESET" $AMP $STEPS "${args[@]}" 2>>"$OUT/err.txt" | tee -a "$OUT/gpu_bench.jsonl"
  if [ -d "$OUT/profile-$n" ]; then gzip -f "$OUT/profile-$n"/profiler/*.trace.json 2>/dev/null; rm -rf "$OUT/profile-$n"/logs; fi
done
if [ "${MOE_BENCH:-1}" = "1" ] && [ "$PRESET" = "gpt2-small" ]; then
  stage "moe_bench"
  timeout 120 $PY benchmarks/moe_bench.py 2>>"$OUT/err.txt" | tee "$OUT/moe_bench.jsonl"
fi
stage "done"
if [ -s "$OUT/err.txt" ]; then grep -v '^ ' "$OUT/err.txt" | grep -iE 'error|warn' | tail -5 >&2; fi
failed=$(grep -c '"ok": false' "$OUT/gpu_checks.jsonl" 2>/dev/null)
lines=$(grep -c '"ratio"' "$OUT/gpu_bench.jsonl" 2>/dev/null)
if [ "${failed:-0}" != "0" ] || [ "${lines:-0}" != "$n" ]; then  # n: the runs started
  echo "gpu.sh: ${failed:-0} failed checks, ${lines:-0} of $n benchmark lines (see $OUT/err.txt)" >&2; exit 1
fi
