#!/usr/bin/env bash
# Start a single-machine Ray head with the job server (dashboard) on 127.0.0.1. Ray still opens
# its GCS, raylet and agent ports on all interfaces (token auth guards them): firewall them on a
# shared network. Then submit runs with `ray job submit` (see cluster/README.md).
#
#   cluster/start_local_head.sh            # GCS on 6399, dashboard/jobs on 8265, all cores
#   RAY_PORT=6400 DASHBOARD_PORT=8266 NUM_CPUS=2 cluster/start_local_head.sh
#
# The head runs with the venv's Python on PATH, so a job's bare `python` is that Python.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
RAY_PORT="${RAY_PORT:-6399}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
NUM_CPUS="${NUM_CPUS:-$(nproc)}"
# New clusters use token auth; client and head must agree (the token lives in ~/.ray/auth_token).
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
export PATH="$VENV/bin:$PATH"

ray start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
  --num-cpus="$NUM_CPUS" --disable-usage-stats "$@"

echo
echo "Ray head up. Submit a run with:"
echo "  RAY_AUTH_MODE=$RAY_AUTH_MODE ray job submit --address http://127.0.0.1:$DASHBOARD_PORT \\"
echo "      --working-dir $ROOT --runtime-env-json '{\"excludes\": [\"runs\", \".hypothesis\", \".pytest_cache\", \".ruff_cache\"]}' \\"
echo "      -- $VENV/bin/python train.py --task regression --set logging.dir=/tmp/raytrain-runs/regression/\$(date +%Y%m%d-%H%M%S)"
echo "Stop it with: cluster/stop_local_head.sh"
