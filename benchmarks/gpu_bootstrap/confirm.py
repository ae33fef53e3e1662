"""Measure candidate worlds on *fresh* held-out scenes that no training run used.

The bootstrap's own metrics (scenes [n_scenes, n_scenes + n_heldout)) are what one would pick a world by, so
they are optimistic for the one picked. This re-runs ``posescene.bootstrap.measure`` on scenes
[--first, --first + --scenes) (by default [1240, 1320): after the held-out range, before the extra scenes,
never trained on), for each world given, with the same seed, sampler and judges.

    python benchmarks/gpu_bootstrap/confirm.py build/gpu2200 build/gpu3600 --out benchmarks/results/world_confirm.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, T2IAdapter

from posescene.bootstrap import _load, _overlaps, _read_training_data, make_data, measure
from posescene.config import load_params
from posescene.judges import KeypointEstimator, SceneClassifier
from posescene.world import world_architecture

KEYS = ("primary_fidelity_norm@0.1bbox", "primary_fidelity_norm@0.1bbox_ci95", "base_fidelity_norm@0.1bbox",
        "base_fidelity_norm@0.1bbox_ci95", "primary_fidelity_norm@0.1img", "primary_scene_acc", "base_scene_acc",
        "vae_psnr_db", "judge_pck_real@0.1bbox", "ceiling_pck@0.1bbox")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("worlds", nargs="+", type=Path)
    ap.add_argument("--first", type=int, default=1240)
    ap.add_argument("--scenes", type=int, default=80)
    ap.add_argument("--samples", type=int, default=320)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    params = load_params("params.yaml", {"bootstrap.eval_samples": a.samples})
    bp, seed = params.bootstrap, params.seed
    res = world_architecture().resolution
    fresh = [[a.first, a.first + a.scenes]]
    held = make_data(a.first, a.scenes, bp.poses_per_scene, res, seed, params.poses.beta, params.render.radius,
                     desc="fresh held-out")  # fmt: skip
    results: dict[str, object] = {"scenes": fresh, "images_generated_per_model": min(a.samples, len(held))}
    for world in a.worlds:
        seen = [r for rs in _read_training_data(world)["parts"].values() for r in rs]
        if _overlaps(seen, fresh):
            raise SystemExit(f"{world} trained on scenes overlapping {fresh}: not fresh for it")
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "world"
            shutil.copytree(world, copy)
            cpu = torch.device("cpu")
            vae = _load(AutoencoderKL, world / "vae", cpu)
            classifier = _load(SceneClassifier, world / "scene_classifier", cpu)
            estimator = _load(KeypointEstimator, world / "keypoint_estimator", cpu)
            adapter = _load(T2IAdapter, world / "primary_adapter", cpu)
            m = measure(copy, held, vae, classifier, estimator, adapter, bp, seed, cpu)
        results[str(world)] = {k: m[k] for k in KEYS}
        print(world, json.dumps(results[str(world)]), flush=True)
    a.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
