"""What the training-free alternatives cost in the one sampler: their arms against the scale arms, side by side.

Peer: :meth:`ModelBank.sample` drawing the primary at four scales (the arms every evaluation had). Candidate: the
same sampler, sets, poses and noises drawing the four alternative arms the default evaluation adds (steps 0.3 and
0.6, the mask at margin 0, the inpainting bound, which also draws each set's base trajectory). Both in U-Net batches
of ``evaluate.batch_size`` with DPM-Solver++ 10 steps, interleaved ``--repeats`` times in one process; the result is
images/s of each and their ratio (``benchmarks/results/sampling_alternatives.json``).

    python benchmarks/bench_alternatives.py [--sets 2] [--poses 8] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_sampling import held_out_sets  # noqa: E402

from posescene.evaluation import metrics  # noqa: E402
from posescene.io import write_json_atomic  # noqa: E402
from posescene.sampling.maps import condition_maps  # noqa: E402
from posescene.sampling.sampler import ArmJob, Injection, ModelBank  # noqa: E402

SCALE_ARMS = [("primary", s, Injection()) for s in (0.5, 0.75, 1.0, 1.25)]
ALTERNATIVE_ARMS = [
    ("primary", 1.0, Injection("steps", 0.3)),
    ("primary", 1.0, Injection("steps", 0.6)),
    ("primary", 1.0, Injection("mask", 0.0)),
    ("primary", 1.0, Injection("inpaint", 0.15)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=2)
    parser.add_argument("--poses", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pipeline", default="build/world/pipeline")
    parser.add_argument("--adapter", default="models/world/primary_adapter")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampling_alternatives.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    captions, poses = held_out_sets(args.sets, args.poses, first_scene=100_000)
    bank = ModelBank(args.pipeline, {"primary": args.adapter}, resolution=64, device="cpu")
    maps = partial(condition_maps, resolution=64, radius=1, limbs=False, in_channels=1, invert=False)

    def region(pose, margin: float) -> np.ndarray:
        return metrics.person_mask([pose.keypoints_at(64, 0.05)], (64, 64), margin)

    def draw(arms: list) -> float:
        jobs = [ArmJob(c, 7 + k, p, a, s, inj) for k, c in enumerate(captions) for p in poses for a, s, inj in arms]
        start = time.perf_counter()
        bank.sample(jobs, steps=10, guidance_scale=5.0, batch_size=args.batch_size, maps=maps, sampler="dpmsolver",
                    bf16=False, region=region, progress=False)  # fmt: skip
        return len(jobs) / (time.perf_counter() - start)

    draw(SCALE_ARMS[:1])  # warm-up
    rates: dict[str, list[float]] = {"scale": [], "alternatives": []}
    for _ in range(args.repeats):
        rates["scale"].append(draw(SCALE_ARMS))
        rates["alternatives"].append(draw(ALTERNATIVE_ARMS))
    result = {
        "images_per_s": {k: round(float(np.median(v)), 3) for k, v in rates.items()},
        "ratio_alternatives_to_scale": round(float(np.median(rates["alternatives"]) / np.median(rates["scale"])), 3),
        "runs": rates,
        "design": {"sets": args.sets, "poses": args.poses, "batch_size": args.batch_size, "steps": 10},
        "threads": torch.get_num_threads(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
    }
    write_json_atomic(args.out, result, sort_keys=False)
    print(result)


if __name__ == "__main__":
    main()
