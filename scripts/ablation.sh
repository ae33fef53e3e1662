#!/usr/bin/env bash
# The objective ablation (METHOD.md step 4) as DVC experiments: the scale-matched objective (the default),
# fixed weights J = L_bal + lambda * L_diff for lambda in {0.1, 1, 10}, and learned uncertainty weighting.
# Each experiment reruns only `train` and `evaluate` (upstream stages are unchanged), then the table compares
# their drift and fidelity:
#
#   bash scripts/ablation.sh                 # run the five experiments one after another in the workspace
#   bash scripts/ablation.sh --queue -j 2    # queue them and run 2 at a time (isolated temp workspaces)
#   bash scripts/ablation.sh --dry           # print what each experiment would run, run nothing
#   bash scripts/ablation.sh --show          # only print the comparison table
#
# Models trained here register under their own MLflow model name (mlflow.registered_model=$ABLATION_MODEL),
# so an ablation run can never move the production `candidate`/`champion` aliases.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv/bin ] && export PATH="$(pwd)/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1

mode=workspace jobs=1 dry=() show_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --queue) mode=queue ;;
    -j|--jobs) jobs="$2"; shift ;;
    --dry) dry=(--dry) ;;
    --show) show_only=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PREFIX="${ABLATION_PREFIX:-abl}"
ABLATION_MODEL="${ABLATION_MODEL:-posescene-ablation-adapter}"
# name|-S overrides (every experiment sets both keys: workspace runs start from the previous one's params)
EXPERIMENTS=(
  "scale|train.balance=scale train.lambda_diff=1.0"
  "fixed-0.1|train.balance=fixed train.lambda_diff=0.1"
  "fixed-1|train.balance=fixed train.lambda_diff=1.0"
  "fixed-10|train.balance=fixed train.lambda_diff=10.0"
  "uncertainty|train.balance=uncertainty train.lambda_diff=1.0"
)
# Columns: the ablated params and the drift/fidelity metrics (reports/metrics.json), nothing else.
KEEP='train\.balance|train\.lambda_diff|(secondary|primary)\.(drift_rmse|drift_ssim|drift_lpips|pck)$'
DROP='_ci_(low|high)$|images_per_s|n_images|scene_fraction|detection_rate|^run\.|promotion|mlflow\.|Created|State|Executor'

show() {
  dvc exp show --only-changed --keep "$KEEP" --drop "$DROP" --sort-by secondary.drift_rmse --sort-order asc \
    --no-pager "$@" || dvc exp show --only-changed --keep "$KEEP" --drop "$DROP" --no-pager "$@"
}

if [ "$show_only" = 1 ]; then show; exit 0; fi

# One Prefect server for every stage run (not a temporary one per flow), when the project has the helper.
if [ -f scripts/prefect_server.sh ] && [ ${#dry[@]} -eq 0 ]; then source scripts/prefect_server.sh; fi

backup=$(mktemp)
cp params.yaml "$backup"
restore() { cp "$backup" params.yaml; rm -f "$backup"; }
trap restore EXIT

for spec in "${EXPERIMENTS[@]}"; do
  name="${PREFIX}-${spec%%|*}"
  sets=()
  for kv in ${spec#*|} "mlflow.registered_model=$ABLATION_MODEL"; do sets+=(-S "$kv"); done
  if [ "$mode" = queue ]; then
    echo "== queue $name: ${spec#*|}"
    dvc exp run --queue "${dry[@]}" -n "$name" "${sets[@]}"
  else
    echo "== run $name: ${spec#*|}"
    dvc exp run "${dry[@]}" -n "$name" "${sets[@]}"
  fi
done

if [ "$mode" = queue ] && [ ${#dry[@]} -eq 0 ]; then
  dvc queue start --jobs "$jobs"
  # Wait until nothing is queued or running (dvc queue status lists one task per line).
  while dvc queue status 2>/dev/null | grep -Eq '\b(Queued|Running)\b'; do sleep 10; done
  dvc queue status
  if dvc queue status 2>/dev/null | grep -q '\bFailed\b'; then
    echo "some experiments failed: dvc queue logs <name>" >&2
  fi
fi

if [ ${#dry[@]} -eq 0 ]; then
  echo
  echo "Ablation (lower drift is better at similar pck; baseline = HEAD):"
  show
  echo
  echo "The workspace keeps the last experiment's outputs; 'dvc exp apply <name>' to take one, 'dvc checkout' to"
  echo "return to HEAD's. Plots: dvc plots diff $(printf '%s-%s ' "$PREFIX" scale "$PREFIX" fixed-1 | sed 's/- /-/g')"
fi
