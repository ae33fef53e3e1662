#!/usr/bin/env bash
# The main job on the built-in default: set up, then `dvc repro` the whole pipeline
# (synth -> ingest -> poses -> pairs -> render -> world -> cache -> train -> evaluate)
# against a local Prefect server (started for the run unless one is already up).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
export PATH="$(pwd)/.venv/bin:$PATH"
source scripts/prefect_server.sh
.venv/bin/dvc repro "$@"
echo "posescene: done. Report: reports/report.md  metrics: reports/metrics.json  (dvc metrics show)"
