#!/usr/bin/env bash
# Start a single-machine Ray head with token auth, every port on 127.0.0.1 (see cluster/README.md
# for the ports and what a multi-machine head exposes). Then submit runs with `ray job submit`.
#
# Token auth: the token is read from $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else
# ~/.ray/auth_token. If none exists (a fresh account), one is created here, once: 256 random bits,
# owner-only (0600) in an owner-only folder; an existing token file readable by others is made
# owner-only. Clients on this machine (ray job submit, train.py) read the same file.
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
# New clusters use token auth; client and head must agree.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
export PATH="$VENV/bin:$PATH"
# Every Ray process of this single-machine head on loopback (Ray's macOS/Windows behaviour).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}"

if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  TOKEN_FILE="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
  if [ ! -s "$TOKEN_FILE" ]; then
    (
      umask 077
      mkdir -p "$(dirname "$TOKEN_FILE")"
      python - "$TOKEN_FILE" <<'PY'
import os, secrets, sys
path = sys.argv[1]
tmp = f"{path}.tmp-{os.getpid()}"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as fh:
    fh.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes, but never world-readable
os.replace(tmp, path)
PY
    )
    echo "created a Ray auth token in $TOKEN_FILE (mode 600); give it to other nodes and clients as described in cluster/README.md"
  elif [ -n "$(find "$TOKEN_FILE" -perm /077 2>/dev/null)" ]; then
    chmod 600 "$TOKEN_FILE"
    echo "made $TOKEN_FILE owner-only (it was readable by others)"
  fi
fi

ray start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
  --num-cpus="$NUM_CPUS" --disable-usage-stats "$@"

echo
echo "Ray head up. Submit a run with:"
echo "  RAY_AUTH_MODE=$RAY_AUTH_MODE ray job submit --address http://127.0.0.1:$DASHBOARD_PORT \\"
echo "      --working-dir $ROOT --runtime-env-json '{\"excludes\": [\"runs\", \".hypothesis\", \".pytest_cache\", \".ruff_cache\"]}' \\"
echo "      -- $VENV/bin/python train.py --task regression --set logging.dir=/tmp/raytrain-runs/regression/\$(date +%Y%m%d-%H%M%S)"
echo "Stop it with: cluster/stop_local_head.sh"
