#!/usr/bin/env bash
# The main job on the built-in default: set up, then `dvc repro` the whole pipeline
# (synth -> ingest -> poses -> pairs -> render -> world -> cache -> train -> evaluate).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
source .venv/bin/activate
dvc repro "$@"
echo "posescene: done. Report: reports/report.md  metrics: reports/metrics.json"
