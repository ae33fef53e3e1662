#!/usr/bin/env bash
# The objective ablation (docs/method.md, step 4) as DVC experiments, and the diagnostics that size it.
#
#   bash scripts/ablation.sh --diagnose      # train each balance reading (whole, person, distill) once with the
#                                            # default budget, train stage only, and write the diagnostics
#                                            # (lambda_eff, gradient-norm ratio, pose sensitivity, step time) to
#                                            # reports/ablation/objective_diagnostics.md (~10 min on 2 CPU cores)
#   bash scripts/ablation.sh --report        # only rewrite that report from build/diagnostics (keeps its notes)
#   bash scripts/ablation.sh                 # run every arm as a DVC experiment in the workspace, one after another
#   bash scripts/ablation.sh --queue -j 2    # queue them and run 2 at a time (isolated temp workspaces)
#   bash scripts/ablation.sh --dry           # print what each experiment would run, run nothing
#   bash scripts/ablation.sh --show          # only print the comparison table
#   bash scripts/ablation.sh --frontier      # the cheap paired design: train every arm (train stage only) into
#                                            # build/ablation/<arm>, then ONE evaluation draws all of them on the
#                                            # same sets, poses and noises beside the primary's frontier and writes
#                                            # reports/ablation/frontier/ (report.md, metrics.json, frontier.png):
#                                            # Δdrift at matched fidelity per arm with paired CIs. ARMS="a b" limits
#                                            # the arms (names as below, e.g. ARMS="scale-whole fixed-distill-18.8");
#                                            # EVAL_SETS="key=value ..." overrides the evaluation's params;
#                                            # FRONTIER_OUT another folder than reports/ablation/frontier; beside
#                                            # the report, training_summaries.json: each arm's training summary
#
# Arms (each sets train.balance, train.balance_reading and train.lambda_diff, so no arm inherits another's):
#   scale-<reading>           the scale-matched objective, for every reading in READINGS
#   fixed-<reading>-<lambda>  J = L_bal + lambda L_diff on a log grid lambda_eff/30 .. 30 lambda_eff (7 points,
#                             a factor 30^(1/3) = 3.1 apart), lambda_eff = what the scale mapping applies to that
#                             reading after the default 200 steps: build/diagnostics/<reading>/metrics.json when
#                             --diagnose ran, else the measured numbers below (reports/ablation/objective_diagnostics.md)
#   uncertainty-<reading>     learned log-variance weighting
#   steps-<n>                 the default objective (params.yaml) trained for n steps instead of train.steps, for
#                             every n in BUDGETS (env, default "1000 3000"): does a longer budget leave the
#                             primary's scale curve? (e.g. ARMS="steps-1000 steps-3000" FRONTIER_OUT=reports/ablation/budget
#                             bash scripts/ablation.sh --frontier)
# READINGS (env, default "$DEFAULT_READING" = params.yaml's train.balance_reading) picks the readings the fixed and
# uncertainty arms are run for; GRID_READINGS likewise for the fixed grid alone.
#
# The readings of issue 25 (docs/method.md, "Readings of the objective that target the turn-down"), each the default
# objective with one train.* change; ARMS=readings runs all of them:
#   text-target               train.diff_target=text (L_diff against the U-Net without adapter)
#   constraint-<eps>          train.balance=constraint at every eps in EPSILONS (env, default "0.03 0.1 0.3")
#   high-noise                train.diff_timestep_power=$POWER (env, default 2)
#   guided                    train.guided_diff=true + train.empty_caption_share=$EMPTY_SHARE (env, default 0.1)
#   no-actions                train.caption_actions=false
#   drift-made                the three above together (high-noise + guided + no-actions)
#   correct                   train.secondary_role=correct: P-Ad + S-Ad, S-Ad from zero output. Its adapter is the
#                             correction alone, so --frontier gives it `role: correct` in evaluate.ablations (the
#                             evaluation draws P-Ad at 1 plus it, the model as trained), beside every other arm; an
#                             arm that sets no secondary_role has params.yaml's (steps-* arms: the default's). As a
#                             DVC experiment it is the `secondary` arm, which the evaluation draws the same way
#   text-correct              text-target + correct
#   cross-pose                train.cross_pose_weight=$CROSS_WEIGHT (env, default 1) (beyond the patent)
#   text-correct-<change>     text-correct with high-noise, guided, drift-made or cross-pose; ARMS=corrections
# Every training run's metrics.json has the diagnostics (l_diff_drop, final_probe_pose_frac, the effective primary
# scale and final_turned_down_primary); build/ablation.<arm>.log ends with the summary sentence.
#
# Ranking: NOT by drift alone. The evaluation writes reports/metrics.json with a `verdict` section and
# `delta_drift_matched` (drift difference at matched pose fidelity, against turning the primary down); the
# table keeps those columns and sorts by SORT_BY (default: delta_drift_matched, ascending = the secondary's
# drift below the matched primary's). Which sub-key is the headline is the evaluation's to say: pass a full
# column name (dvc exp show lists them) as SORT_BY if the default is ambiguous.
#
# Models trained here register under their own MLflow model name (mlflow.registered_model=$ABLATION_MODEL),
# so an ablation run can never move the production `candidate`/`champion` aliases.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv/bin ] && export PATH="$(pwd)/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1

mode=workspace jobs=1 dry=() show_only=0 diagnose=0
while [ $# -gt 0 ]; do
  case "$1" in
    --queue) mode=queue ;;
    -j|--jobs) jobs="$2"; shift ;;
    --dry) dry=(--dry) ;;
    --show) show_only=1 ;;
    --diagnose) diagnose=1 ;;
    --report) diagnose=2 ;;
    --frontier) mode=frontier ;;
    -h|--help) sed -n '2,63p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PREFIX="${ABLATION_PREFIX:-abl}"
ABLATION_MODEL="${ABLATION_MODEL:-posescene-ablation-adapter}"
DIAG_DIR="${DIAG_DIR:-build/diagnostics}"
REPORT="reports/ablation/objective_diagnostics.md"
# params.yaml's balance reading and secondary role, read once (one Python start)
read -r DEFAULT_READING DEFAULT_ROLE < <(python -c "from posescene.config import load_params; \
t = load_params('params.yaml').train; print(t.balance_reading, t.secondary_role)")
READINGS="${READINGS:-$DEFAULT_READING}"
GRID_READINGS="${GRID_READINGS:-$READINGS}"
# lambda_eff of the scale mapping after the default 200 steps (mean of the last train.log_every steps),
# measured by `bash scripts/ablation.sh --diagnose` (reports/ablation/objective_diagnostics.md); used when
# build/diagnostics/<reading>/metrics.json is not there.
declare -A MEASURED_LAMBDA=([whole]=24.8 [person]=32.1 [distill]=18.8)

# ------------------------------------------------------------------------------------------- diagnose

if [ "$diagnose" = 1 ]; then
  # One thread: the numbers (and the step-time comparison) must not depend on what else runs on the box.
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false
  for reading in whole person distill; do
    echo "== diagnose $reading: posescene train (train.balance_reading=$reading) -> $DIAG_DIR/$reading"
    posescene train --no-progress --no-resume \
      --set "train.balance_reading=$reading" --set "train.out_dir=$DIAG_DIR/$reading" \
      --set "train.checkpoint_dir=checkpoints/diagnostics/$reading" \
      --set mlflow.experiment=posescene-diagnostics --set mlflow.registered_model=posescene-diagnostics-adapter \
      > "$DIAG_DIR.$reading.log" 2>&1 || { echo "failed: see $DIAG_DIR.$reading.log" >&2; exit 1; }
  done
  echo "== step time (whole vs distill, interleaved in one process) and probe losses of each trained adapter"
  python - "$DIAG_DIR" <<'PY'
"""Seconds per train_step for whole vs distill, alternating in one process (same load for both); then L_diff
and every reading's L_bal on the fixed probe batch for P-Ad's copy (initialisation) and each trained S-Ad."""
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler

from posescene.training import objective
from posescene.training import train as T
from posescene.data.cache import load_cache
from posescene.config import load_params
from posescene.io import write_json_atomic
from posescene.models import load_adapter

torch.set_num_threads(1)
diag = Path(sys.argv[1])
params = load_params("params.yaml")
acc = Accelerator()
base, primary, secondary, dtype = T.load_models(params, acc.device)
cache = load_cache(params.cache.out_dir, params.model.base, params.model.resolution)
data = T.load_train_set(params, T.read_pair_rows(params.pairs.out), cache, T.person_boxes(params.poses.out_dir))


def context(reading: str, adapter: torch.nn.Module) -> T.StepContext:
    p = load_params("params.yaml", {"train.balance_reading": reading, "train.balance": "scale"})
    balance = objective.make_balance("scale", p.train.running_mean_momentum, p.train.lambda_diff)
    optimizer = T.make_optimizer(p.train, adapter, balance)
    return T.StepContext(p, acc, base, primary, adapter, balance, optimizer, get_scheduler("constant", optimizer), dtype)


probe = T.make_probe(data, params, acc.device, base.noise_scheduler)
adapters = {"init (P-Ad copy)": secondary}
adapters.update({r: load_adapter(str(diag / r / "secondary_adapter")) for r in ("whole", "person", "distill")})
probe_losses = {}
with torch.no_grad():
    for name, adapter in adapters.items():
        row = {}
        for reading in objective.READINGS:
            losses = T.forward_losses(context(reading, adapter), probe)
            row["l_diff"], row[f"l_bal_{reading}"] = float(losses.l_diff), float(losses.l_bal)
        probe_losses[name] = row

contexts = {reading: context(reading, secondary) for reading in ("whole", "distill")}
times = {reading: [] for reading in contexts}
position = 0
for i in range(2 * 25):
    reading = ("whole", "distill")[i % 2]
    start = time.perf_counter()
    _, position = T.train_step(contexts[reading], data, i + 1, position)
    times[reading].append(time.perf_counter() - start)
median = {r: statistics.median(v[2:]) for r, v in times.items()}  # the first steps warm up
out = {
    "step_time": {"s_per_step_median": median, "distill_over_whole": median["distill"] / median["whole"], "steps": 25},
    "probe_losses": probe_losses,
}
write_json_atomic(diag / "probe.json", out)
print(json.dumps(out, indent=1))
PY
fi

if [ "$diagnose" != 0 ]; then
  echo "== writing $REPORT"
  python - "$DIAG_DIR" "$REPORT" <<'PY'
"""reports/ablation/objective_diagnostics.md from the three diagnostics runs; keeps what follows NOTES."""
import csv
import json
import sys
from pathlib import Path

from posescene.io import write_text_atomic

diag, report = Path(sys.argv[1]), Path(sys.argv[2])
readings = ("whole", "person", "distill")
NOTES = "<!-- notes: written by hand, kept when the numbers above are regenerated -->"
notes = report.read_text().partition(NOTES)[2] if report.is_file() else ""


def fmt(value: str | float | None) -> str:
    if value in (None, ""):
        return "-"
    v = float(value)
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


rows = []
for reading in readings:
    loss = list(csv.DictReader(open(diag / reading / "loss.csv")))
    metrics = json.loads((diag / reading / "metrics.json").read_text())
    measured = [r for r in loss if r["gnorm_diff"]]
    init, last = measured[0], measured[-1]
    rows.append(
        f"| `{reading}` | {fmt(init['lambda_eff'])} | {fmt(metrics['lambda_eff'])} | {fmt(init.get('gnorm_ratio'))} "
        f"| {fmt(last.get('gnorm_ratio'))} (step {last['step']}) | {fmt(init[f'pose_sens_{reading}'])} "
        f"| {fmt(metrics[f'final_pose_sens_{reading}'])} | {fmt(metrics['l_diff'])} | {fmt(metrics['l_bal'])} "
        f"| {json.loads((diag / reading / 'run.json').read_text())['s_per_step']:.3f} |"
    )
extra = json.loads((diag / "probe.json").read_text())
timing = extra["step_time"]
probe_rows = [
    f"| {name} | " + " | ".join(fmt(v[k]) for k in ("l_diff", *(f"l_bal_{r}" for r in readings))) + " |"
    for name, v in extra["probe_losses"].items()
]
sens = []
for reading in readings:
    metrics = json.loads((diag / reading / "metrics.json").read_text())
    sens.append(
        f"| S-Ad trained with `{reading}` | "
        + " | ".join(fmt(metrics[f"final_pose_sens_{r}"]) for r in readings)
        + " |"
    )
text = f"""# Objective diagnostics: the balance readings at initialisation and after the default training

Made by `bash scripts/ablation.sh --diagnose` (train stage only; one torch thread; default params.yaml, each run
with `train.balance_reading` set; the built-in world and its default data). Per-step and per-interval values are in
`{diag}/<reading>/loss.csv` and the MLflow experiment `posescene-diagnostics`.

- lambda_eff: the weight of L_diff relative to L_bal that the scale mapping applies (mean L_bal / mean L_diff; for
  distill, its pose effect / mean L_diff); "after" is the mean over the last `train.log_every` steps.
- grad ratio: lambda_eff x |dL_diff/dS-Ad| / |dL_bal/dS-Ad| on the step's batch: > 1 means J pulls towards
  scene stability more than towards the pose. "-" where |dL_bal| = 0 (distill at initialisation: S-Ad = its teacher).
- pose sensitivity: |L_bal(S-Ad's features zeroed) - L_bal(with them)| / max of the two, on a fixed probe batch
  (16 training rows, timesteps spread over 0..T-1), in [0, 1].

| reading | lambda_eff init | lambda_eff after | grad ratio init | grad ratio after | pose sens. init | pose sens. after | L_diff after | L_bal after | s/step (run) |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Pose sensitivity of each reading's L_bal (columns) for the adapter each run trained (rows):

| trained adapter | whole | person | distill |
|---|---:|---:|---:|
{chr(10).join(sens)}

Losses on the same probe batch for P-Ad's copy (S-Ad at initialisation) and each trained S-Ad (L_diff: lower =
output closer to the primary's on the scene; L_bal columns: each reading's balance loss):

| adapter | L_diff | L_bal whole | L_bal person | L_bal distill |
|---|---:|---:|---:|---:|
{chr(10).join(probe_rows)}

Step time, `train_step` alternating whole / distill in one process ({timing['steps']} steps each, median after
2 warm-up steps): whole {timing['s_per_step_median']['whole']:.3f} s, distill {timing['s_per_step_median']['distill']:.3f} s
(x{timing['distill_over_whole']:.2f}: distill's extra no-grad U-Net + P-Ad forward on B_0).

{NOTES}{notes}"""
write_text_atomic(report, text.rstrip() + "\n")
print(text)
PY
  exit 0
fi

# ------------------------------------------------------------------------------------------- the arms

lambda_eff() {  # $1 = reading: the scale mapping's lambda_eff after the default run
  local metrics="$DIAG_DIR/$1/metrics.json"
  if [ -f "$metrics" ]; then
    python -c "import json,sys; print(json.load(open(sys.argv[1]))['lambda_eff'])" "$metrics"
  else
    echo "${MEASURED_LAMBDA[$1]}"
  fi
}

log_grid() {  # $1 = lambda_eff -> 7 values lambda_eff * 30^(k/3), k = -3..3 (3 significant digits)
  python -c "import sys; l=float(sys.argv[1]); print(' '.join(f'{l*30**(k/3):.3g}' for k in range(-3, 4)))" "$1"
}

# name|overrides
# Every arm but steps-* is the first reading (L_diff against the primary on A_0, S-Ad replacing P-Ad) with its own
# change, as when these arms were first run; steps-* is whatever params.yaml trains (its default).
FIRST="train.diff_target=primary train.secondary_role=replace"
EXPERIMENTS=()
for reading in whole person distill; do
  EXPERIMENTS+=("scale-$reading|$FIRST train.balance=scale train.balance_reading=$reading train.lambda_diff=1.0")
done
for reading in $GRID_READINGS; do
  for lam in $(log_grid "$(lambda_eff "$reading")"); do
    EXPERIMENTS+=("fixed-$reading-$lam|$FIRST train.balance=fixed train.balance_reading=$reading train.lambda_diff=$lam")
  done
done
for reading in $READINGS; do
  EXPERIMENTS+=("uncertainty-$reading|$FIRST train.balance=uncertainty train.balance_reading=$reading train.lambda_diff=1.0")
done

for n in ${BUDGETS:-1000 3000}; do
  EXPERIMENTS+=("steps-$n|train.steps=$n")
done

# issue 25's readings (names in the header); the balance and its reading are set so no arm inherits another's
DEFAULT_OBJECTIVE="$FIRST train.balance=scale train.balance_reading=distill"
HIGH_NOISE="train.diff_timestep_power=${POWER:-2}"
GUIDED="train.guided_diff=true train.empty_caption_share=${EMPTY_SHARE:-0.1}"
READING_ARMS=("text-target|$DEFAULT_OBJECTIVE train.diff_target=text")
for eps in ${EPSILONS:-0.03 0.1 0.3}; do
  READING_ARMS+=("constraint-$eps|$FIRST train.balance=constraint train.balance_reading=distill train.constraint_epsilon=$eps")
done
READING_ARMS+=(
  "high-noise|$DEFAULT_OBJECTIVE $HIGH_NOISE"
  "guided|$DEFAULT_OBJECTIVE $GUIDED"
  "no-actions|$DEFAULT_OBJECTIVE train.caption_actions=false"
  "drift-made|$DEFAULT_OBJECTIVE $HIGH_NOISE $GUIDED train.caption_actions=false"
  "correct|$DEFAULT_OBJECTIVE train.secondary_role=correct"
  "text-correct|$DEFAULT_OBJECTIVE train.diff_target=text train.secondary_role=correct"
  "cross-pose|$DEFAULT_OBJECTIVE train.cross_pose_weight=${CROSS_WEIGHT:-1}"
)
# text-correct with one more change each: does what made the first reading's drift (training unlike sampling, the
# pose-dependent drift itself) help a correction? ARMS=corrections runs them (with steps-* for its budget)
TEXT_CORRECT="$DEFAULT_OBJECTIVE train.diff_target=text train.secondary_role=correct"
CORRECTION_ARMS=(
  "text-correct-high-noise|$TEXT_CORRECT $HIGH_NOISE"
  "text-correct-guided|$TEXT_CORRECT $GUIDED"
  "text-correct-drift-made|$TEXT_CORRECT $HIGH_NOISE $GUIDED train.caption_actions=false"
  "text-correct-cross-pose|$TEXT_CORRECT train.cross_pose_weight=${CROSS_WEIGHT:-1}"
)
EXPERIMENTS+=("${READING_ARMS[@]}" "${CORRECTION_ARMS[@]}")
names_of() { local spec; for spec in "$@"; do printf '%s ' "${spec%%|*}"; done; }  # the arms' names
case "${ARMS:-}" in
  readings) ARMS=$(names_of "${READING_ARMS[@]}") ;;
  corrections) ARMS=$(names_of "${CORRECTION_ARMS[@]}") ;;
esac

SORT_BY="${SORT_BY:-delta_drift_matched}"
# Columns: the ablated params, the evaluation's verdict and matched-fidelity drift difference, drift and fidelity.
KEEP='train\.balance|train\.balance_reading|train\.lambda_diff|verdict|delta_drift_matched|secondary_s100\.drift$|secondary_s100\.fidelity_norm$'
DROP='images_per_s|n_images|scene_fraction|detection_rate|^run\.|promotion|mlflow\.|Created|State|Executor'

show() {
  dvc exp show --only-changed --keep "$KEEP" --drop "$DROP" --sort-by "$SORT_BY" --sort-order asc --no-pager "$@" \
    || dvc exp show --only-changed --keep "$KEEP" --drop "$DROP" --no-pager "$@"
}

if [ "$show_only" = 1 ]; then show; exit 0; fi

if [ "$mode" = frontier ]; then
  # Every arm trained by the library CLI with the default budget (no DVC experiment per arm), then one evaluation
  # with the arms as evaluate.ablations: every arm is compared with the primary's curve on the same draw.
  out_root=build/ablation
  ablations="[" trained=()
  for spec in "${EXPERIMENTS[@]}"; do
    arm="${spec%%|*}"
    if [ -n "${ARMS:-}" ] && [[ " $ARMS " != *" $arm "* ]]; then continue; fi
    trained+=("$arm")
    sets=()
    for kv in ${spec#*|}; do sets+=(--set "$kv"); done
    echo "== train $arm: ${spec#*|}"
    if [ ${#dry[@]} -eq 0 ]; then
      posescene train --no-progress --no-resume "${sets[@]}" --set "train.out_dir=$out_root/$arm" \
        --set "train.checkpoint_dir=checkpoints/ablation/$arm" --set "mlflow.registered_model=$ABLATION_MODEL" \
        > "$out_root.$arm.log" 2>&1 || { echo "failed: see $out_root.$arm.log" >&2; exit 1; }
    fi
    role="$DEFAULT_ROLE"  # the arm's train.secondary_role: its own override, else params.yaml's
    for kv in ${spec#*|}; do [[ "$kv" == train.secondary_role=* ]] && role="${kv#*=}"; done
    ablations+="{name: ${arm//./_}, adapter: $out_root/$arm/secondary_adapter, role: $role},"
  done
  ablations="${ablations%,}]"
  frontier_out="${FRONTIER_OUT:-reports/ablation/frontier}"
  extra=()
  for kv in ${EVAL_SETS:-}; do extra+=(--set "$kv"); done  # e.g. EVAL_SETS="evaluate.n_prompts=8" (fewer sets)
  echo "== evaluate every arm beside the primary's frontier -> $frontier_out"
  if [ ${#dry[@]} -eq 0 ]; then
    posescene evaluate --no-progress --set "evaluate.ablations=$ablations" \
      --set evaluate.out_dir="$frontier_out" --set evaluate.compare_champion=false \
      --set "mlflow.registered_model=$ABLATION_MODEL" "${extra[@]}"
    # each arm's training summary beside the evaluation (the one-step probe's effective scale, L_diff's drop, ...)
    python - "$out_root" "$frontier_out/training_summaries.json" "${trained[@]}" <<'PY'
import json
import sys
from pathlib import Path

from posescene.io import write_json_atomic

root, out, arms = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
keep = ("final_effective_primary_scale", "final_drift_gap", "final_turned_down_primary", "l_diff_drop",
        "final_probe_pose_frac", "steps")
summaries = {}
for arm in arms:
    metrics, run = (json.loads((root / arm / name).read_text()) for name in ("metrics.json", "run.json"))
    summaries[arm] = {**{k: metrics.get(k) for k in keep}, "summary": run.get("summary"),
                      "wall_time_s": run.get("wall_time_s")}
write_json_atomic(out, summaries)
PY
  else
    echo "posescene evaluate --set evaluate.ablations=$ablations --set evaluate.out_dir=$frontier_out"
  fi
  exit 0
fi

# One Prefect server for every stage run (not a temporary one per flow), when the project has the helper.
if [ -f scripts/prefect_server.sh ] && [ ${#dry[@]} -eq 0 ]; then source scripts/prefect_server.sh; fi

backup=$(mktemp)
cp params.yaml "$backup"
restore() { cp "$backup" params.yaml; rm -f "$backup"; }
trap restore EXIT

for spec in "${EXPERIMENTS[@]}"; do
  name="${PREFIX}-${spec%%|*}"
  sets=()
  for kv in ${spec#*|} "mlflow.registered_model=$ABLATION_MODEL"; do sets+=(--set-param "$kv"); done
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
  echo "Ablation, ranked by $SORT_BY (the evaluation's matched-fidelity comparison, not drift alone); baseline = HEAD:"
  show
  echo
  echo "The workspace keeps the last experiment's outputs; 'dvc exp apply <name>' to take one, 'dvc checkout' to"
  echo "return to HEAD's. Plots: dvc plots diff ${PREFIX}-scale-whole ${PREFIX}-scale-person ${PREFIX}-scale-distill"
fi
