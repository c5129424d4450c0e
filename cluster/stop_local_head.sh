#!/usr/bin/env bash
# Stop the Ray processes started by start_local_head.sh (`ray stop` stops every Ray node of this
# user on this machine, including in-process clusters of running scripts).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
"$VENV/bin/ray" stop "$@"
