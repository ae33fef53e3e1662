"""Measure candidate worlds on *fresh* held-out scenes that no training run used.

The bootstrap's own metrics (scenes [n_scenes, n_scenes + n_heldout)) are what one would pick a world by, so
they are optimistic for the one picked. This re-runs ``posescene.world.measure.measure`` on scenes
[--first, --first + --scenes) (by default [1240, 1320): after the held-out range, before the extra scenes,
never trained on), for each world given, with the same seed, sampler and judges.

    python benchmarks/gpu_bootstrap/confirm.py build/gpu2200 build/gpu3600 --out benchmarks/results/world_confirm.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from posescene.config import load_params
from posescene.io import write_json_atomic
from posescene.world.measure import measure_world

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
    results: dict[str, object] = {"scenes": [[a.first, a.first + a.scenes]]}
    for world in a.worlds:
        m = measure_world(world, params, a.first, a.scenes)
        results["images_generated_per_model"] = min(a.samples, m["heldout_images"])
        results[str(world)] = {k: m[k] for k in KEYS}
        print(world, json.dumps(results[str(world)]), flush=True)
    write_json_atomic(a.out, results)


if __name__ == "__main__":
    main()
