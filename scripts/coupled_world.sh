#!/usr/bin/env bash
# The coupled world (issue 23): models/world_coupled, continued from the independent world models/world.
#
#   bash scripts/coupled_world.sh            # train (resumes from checkpoints/coupled after a kill) and measure
#   bash scripts/coupled_world.sh --measure  # only measure both worlds' pull on the same held-out scenes
#                                            # (reports/worlds/pull.json; ~10 min on 2 CPU cores)
#
# Its U-Net and primary adapter are fine-tuned *together* (the bootstrap's joint stage) on scenes whose poses
# go with their kind (bootstrap.coupling 1: every scene shows two actions typical of its kind,
# posescene.data.synth.TYPICAL_ACTIONS), with captions as web captions are for a pose adapter's data: the scene phrase
# left out of 40% of them and naming another kind in 25% (bootstrap.sceneless_captions, mismatched_captions), no
# caption naming the action (caption_actions false: the action's words would carry the scene, and the
# evaluation's captions carry none). Only the rows with the adapter read these captions; the rows without it
# (the base model) read each image's true caption (caption_policy_rows adapter): a base model trained on captions
# that name the place, an adapter trained on captions that often do not. So where text and pose disagree, the
# adapter's image follows the pose. VAE and judges are the independent world's (decoder_steps 0, judge_steps 0).
# Training scenes: [0, 1200) and fresh [5000, 8000); held out: [1200, 1240).
# 1,500 joint steps at batch 32 take ~25 min on an idle 2-core CPU (1 s/step; beside other jobs OpenMP threads
# spin: OMP_WAIT_POLICY=PASSIVE, the default here); on a GPU box it trains there (bootstrap.device auto).
# The earlier attempts and what each gave: reports/worlds/ and the README ("A world where poses go with scenes").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

RECIPE=(
  --set bootstrap.init_from=models/world
  --set bootstrap.coupling=1.0
  --set bootstrap.sceneless_captions=0.4
  --set bootstrap.mismatched_captions=0.25
  --set bootstrap.caption_actions=false
  --set bootstrap.caption_policy_rows=adapter
  --set bootstrap.decoder_steps=0
  --set bootstrap.judge_steps=0
  --set bootstrap.joint_steps=1500
  --set bootstrap.extra_first_scene=5000
  --set bootstrap.extra_scenes=3000
  --set bootstrap.checkpoint_dir=checkpoints/coupled_a4
  --set bootstrap.threads=2
)

if [[ "${1:-}" != "--measure" ]]; then
  OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$PY" -m posescene.cli bootstrap --out-dir models/world_coupled --resume "${RECIPE[@]}" "$@"
fi
"$PY" -m posescene.cli measure-worlds --out reports/worlds/pull.json models/world models/world_coupled
