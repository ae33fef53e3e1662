"""Measure a world continued on a GPU (continue_world.py) here, on the CPU, with the exact text encoder.

    python benchmarks/gpu_bootstrap/assemble.py /work/.device/1 gpu2200

re-joins the finished joint checkpoint into ``checkpoints/<name>/joint.pt``, copies the shipped judges into
``build/<name>/`` and runs ``posescene.world.bootstrap`` with ``resume``: every stage is finished, so nothing trains
and the world is written and measured exactly as the CLI's ``bootstrap --resume`` would (without MLflow).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

from posescene.config import load_params, parse_set_option
from posescene.io import atomic_path
from posescene.world.bootstrap import bootstrap


def main(device_out: Path, name: str) -> None:
    parts = sorted(device_out.glob("joint.pt.part-*"))
    if not (device_out / "gpu_summary.json").exists() or not parts:
        raise SystemExit(f"{device_out}: no gpu_summary.json or joint.pt.part-* here; pass the folder the device "
                         "call returned (its files_at)")  # fmt: skip
    summary = json.loads((device_out / "gpu_summary.json").read_text())
    ckpt, out = Path("checkpoints") / name, Path("build") / name
    ckpt.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt / "joint.pt") as tmp, tmp.open("wb") as joint:  # never a half-joined checkpoint
        for part in parts:
            joint.write(part.read_bytes())
    sets = shlex.split(summary["ARGS"].replace("checkpoints/gpu", str(ckpt)))
    (ckpt / "ARGS").write_text(" ".join(sets) + "\n")
    for judge in ("scene_classifier", "keypoint_estimator"):
        shutil.copytree(Path("models/world") / judge, out / judge, dirs_exist_ok=True)
    overrides = parse_set_option([v for k, v in zip(sets, sets[1:], strict=False) if k == "--set"])
    metrics = bootstrap(load_params("params.yaml", overrides), out_dir=out, reuse=["judges"], log_mlflow=False,
                        resume=True)  # fmt: skip
    for k in ("primary_fidelity_norm@0.1bbox", "base_fidelity_norm@0.1bbox", "primary_scene_acc", "vae_psnr_db"):
        print(k, metrics[k])


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
