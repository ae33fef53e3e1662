"""Continue the shipped world's joint stage (U-Net + primary adapter) on a GPU, sized to a time budget.

Run on a lent GPU machine by ``run_device.sh``. A short probe run times the joint step on this device; the
real run then gets as many steps as fit ``--train-seconds`` (the cosine schedule needs its length up front).
Everything else is ``posescene.world.bootstrap`` unchanged: ``bootstrap.init_from=models/world``, judges reused,
decoder not retrained, the run's record (device, steps, seconds) in its finished checkpoint.

The finished checkpoint (final EMA weights) comes back in <= 15 MB pieces; re-assemble and measure it on
the CPU with the exact text encoder (models/world/README.md, "GPU continuation"):

    cat joint.pt.part-* > checkpoints/gpu/joint.pt
    posescene bootstrap --resume --reuse judges --out-dir build/world_gpu $(cat checkpoints/gpu/ARGS)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
import traceback
from pathlib import Path

import torch

from posescene.config import load_params
from posescene.world import bootstrap as bs


def overrides(steps: int, batch: int, ckpt: Path, device: str = "cuda", extra: dict | None = None) -> dict:
    return (extra or {}) | {
        "bootstrap.init_from": "models/world",
        "bootstrap.decoder_steps": 0,
        "bootstrap.joint_steps": steps,
        "bootstrap.batch_size": batch,
        "bootstrap.checkpoint_dir": str(ckpt),
        "bootstrap.checkpoint_minutes": 60,
        "bootstrap.device": device,
        # bf16 autocast pays on a GPU; on the CPU fp32 is ~2x faster (benchmarks/results/world_step_*_cpu.json)
        "bootstrap.bf16_stages": "[unet,adapter,joint]" if device.startswith("cuda") else "[]",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--probe-steps", type=int, default=60)
    ap.add_argument("--train-seconds", type=float, default=330)
    ap.add_argument("--min-steps", type=int, default=200)
    ap.add_argument("--max-steps", type=int, default=20000)
    ap.add_argument("--device", default="cuda")  # cpu: a dry run of this script on a machine without a GPU
    ap.add_argument("--eval-samples", type=int, default=None)  # default: params.yaml
    a = ap.parse_args()
    extra = {} if a.eval_samples is None else {"bootstrap.eval_samples": a.eval_samples}
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    probe_ck, real_ck, world = Path("/tmp/ck_probe"), Path("/tmp/ck_gpu"), Path("/tmp/world_gpu")
    probe_params = load_params("params.yaml", overrides(a.probe_steps, a.batch, probe_ck, a.device, extra))
    bs.bootstrap(probe_params, only=["joint"], log_mlflow=False)
    probe = torch.load(probe_ck / "joint.pt", map_location="cpu", weights_only=False)["stats"]
    per_step = probe["elapsed_s"] / a.probe_steps  # includes warm-up: an overestimate, so the budget holds
    steps = int(min(a.max_steps, max(a.min_steps, a.train_seconds / per_step)))
    steps = steps // 100 * 100 if steps >= 1000 else steps
    print(f"probe: {per_step * 1000:.1f} ms/step at batch {a.batch} -> {steps} steps", flush=True)

    real_ck.mkdir(parents=True, exist_ok=True)
    for cached in probe_ck.glob("latents-*.pt"):  # same encoder, same images: skip re-encoding
        shutil.copy2(cached, real_ck / cached.name)
    world.mkdir(parents=True, exist_ok=True)
    for judge in ("scene_classifier", "keypoint_estimator"):
        shutil.copytree(Path("models/world") / judge, world / judge, dirs_exist_ok=True)
    params = load_params("params.yaml", overrides(steps, a.batch, real_ck, a.device, extra))
    try:
        metrics = bs.bootstrap(params, out_dir=world, reuse=["judges"], log_mlflow=False)
    except Exception:  # the finished checkpoint (written before measuring) still comes back
        traceback.print_exc()
        metrics = {"stages": {}, "error": traceback.format_exc(limit=3)}

    args = " ".join(f"--set {k}={v}" for k, v in overrides(steps, a.batch, Path("checkpoints/gpu")).items()
                    if k != "bootstrap.device")  # fmt: skip
    summary = {
        "device": torch.cuda.get_device_name(0) if a.device == "cuda" else a.device,
        "probe_ms_per_step": round(per_step * 1000, 2),
        "batch_size": a.batch,
        "joint_steps": steps,
        "wall_s": round(time.perf_counter() - t0, 1),
        "ARGS": args,
        "measured_here_with_fp16_text_encoder": {k: v for k, v in metrics.items() if not isinstance(v, dict | list)},
        "stages": metrics.get("stages"),
    }
    (a.out / "gpu_summary.json").write_text(json.dumps(summary, indent=1))
    for name in ("samples_primary.png", "samples_base.png"):
        if (world / name).exists():
            shutil.copy2(world / name, a.out / name)
    subprocess.run(["split", "-b", "15000000", str(real_ck / "joint.pt"), str(a.out / "joint.pt.part-")], check=True)
    print(json.dumps({k: summary[k] for k in ("device", "probe_ms_per_step", "joint_steps", "wall_s")}), flush=True)
    for k in ("primary_fidelity_norm@0.1bbox", "base_fidelity_norm@0.1bbox", "primary_scene_acc", "vae_psnr_db"):
        print(k, metrics.get(k), flush=True)


if __name__ == "__main__":
    main()
