#!/usr/bin/env bash
# The coupled world (issue 23): models/world_coupled, continued from the independent world models/world.
#
#   bash scripts/coupled_world.sh            # train (resumes from checkpoints/coupled after a kill) and measure
#   bash scripts/coupled_world.sh --measure  # only measure both worlds' pull on the same held-out scenes
#                                            # (reports/worlds/pull.json; ~10 min on 2 CPU cores)
#
# Its U-Net and primary adapter are fine-tuned *together* (the bootstrap's joint stage) on scenes whose poses
# go with their kind (bootstrap.coupling 1: every scene shows two actions typical of its kind,
# posescene.synth.TYPICAL_ACTIONS) with the scene phrase left out of half the captions
# (bootstrap.sceneless_captions 0.5), as real captions often leave it out: the pose is then the only cue to the
# scene, so the adapter learns to carry it and the U-Net to read it. VAE and judges are the independent world's
# (decoder_steps 0, judge_steps 0). Training scenes: [0, 1200) and fresh [5000, 8000); held out: [1200, 1240).
# 1,500 joint steps at batch 32 take ~25 min on an idle 2-core CPU (1 s/step; beside other jobs two OpenMP
# threads collapse to ~10 s/step: then --set bootstrap.threads=1, ~1.5 s/step); on a GPU pass --device cuda.
# What it gave (reports/worlds/): the pose carries some scene, but a caption that names the scene wins.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

RECIPE=(
  --set bootstrap.init_from=models/world
  --set bootstrap.coupling=1.0
  --set bootstrap.sceneless_captions=0.5
  --set bootstrap.decoder_steps=0
  --set bootstrap.judge_steps=0
  --set bootstrap.joint_steps=1500
  --set bootstrap.extra_first_scene=5000
  --set bootstrap.extra_scenes=3000
  --set bootstrap.checkpoint_dir=checkpoints/coupled
  --set bootstrap.threads=2
)

if [[ "${1:-}" != "--measure" ]]; then
  "$PY" -m posescene.cli bootstrap --out-dir models/world_coupled --resume "${RECIPE[@]}" "$@"
fi
"$PY" -m posescene.cli measure-worlds --out reports/worlds/pull.json models/world models/world_coupled
