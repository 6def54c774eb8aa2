#!/usr/bin/env bash
# Run the ov3dseg test suite: sets up .venv first when needed (idempotent, fast when nothing changed).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh test/core -k voxel`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# shellcheck disable=SC1091
set +u; . .venv/bin/activate; set -u
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One OpenMP thread unless asked otherwise: on the 2-core CI machine a second thread spins against the ROS
# executors and any other process, and slows torch/spconv steps several-fold (tests that need threads set them).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m pytest "${@:-test}"
