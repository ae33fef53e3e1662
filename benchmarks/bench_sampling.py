"""Evaluation sampling: the batched multi-arm sampler against the per-model stock pipelines it replaced.

Peer (the evaluation before the frontier): one stock diffusers pipeline per model, ``evaluate.batch_size`` 16,
DDIM 20 steps. Candidates, run in this same process on the same sets, poses and noises:

- ``batched_ddim``: :meth:`ModelBank.sample` (rows of every arm in one U-Net batch of 64; the base rows of a
  set drawn once, not once per pose), DDIM 20 steps;
- ``batched_<sampler>_<steps>``: the same with fewer steps of another sampler (default DPM-Solver++ 10);
- ``..._batch16``: the same in U-Net batches of 16 (``evaluate.batch_size``; this CPU's rows/s peak there);
- ``..._bf16`` (``--bf16``): the U-Net under bf16 autocast, plus a check that it gives the same bits twice.

Every variant draws the same arms (the base model, the primary at scale 0.5 and 1.0), so the script also checks
that fewer steps are *equivalent for the evaluation*: per arm, mean scene drift and mean OKS of the world's
judge, their difference to the DDIM-20 values against the bootstrap SE over sets, and whether the ranking of
the arms is unchanged. Images/s and ratios to the peer go to ``benchmarks/results/sampling.json``.

    python benchmarks/bench_sampling.py [--sets 4] [--poses 8] [--sampler dpmsolver] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from posescene.evaluation import metrics
from posescene.io import write_json_atomic
from posescene.sampling.maps import condition_maps
from posescene.sampling.pose import pose_from_pixels
from posescene.sampling.sampler import ArmJob, Job, ModelBank, ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from stock_pipelines import stock_images  # noqa: E402

ARMS = ((None, 0.0), ("primary", 0.5), ("primary", 1.0))


def held_out_sets(n_sets: int, n_poses: int, first_scene: int) -> tuple[list[str], list]:
    """Captions (action removed) and poses of PoseScenes scenes the world never trained on."""
    from posescene.data.synth import generate
    from posescene.evaluation.heldout import without_action

    with tempfile.TemporaryDirectory() as tmp:
        out = generate(Path(tmp) / "s", n_scenes=n_sets + n_poses, poses_per_scene=1, size=64, seed=0,
                       progress=False, first_scene=first_scene)  # fmt: skip
        rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    captions = [without_action(r["text"], r["action"]) for r in rows[:n_sets]]
    poses = [
        pose_from_pixels(r["keypoints"]["x"], r["keypoints"]["y"], 64, 64, 0.05, r["action"])
        for r in rows[n_sets : n_sets + n_poses]
    ]
    return captions, poses


def measure(images: np.ndarray, poses: list, judge: object, n_sets: int) -> dict[str, np.ndarray]:
    """Per arm: per-set mean drift and mean OKS, images (S, P, A, H, W, 3)."""
    targets = [p.keypoints_at(64, 0.05) for p in poses]
    scene = ~metrics.person_mask(targets, (64, 64), 0.15)
    found = judge.predict(images.reshape(-1, *images.shape[3:]))  # type: ignore[attr-defined]
    persons = np.empty(len(found), dtype=object)
    persons[:] = found
    persons = persons.reshape(images.shape[:3])
    out: dict[str, np.ndarray] = {}
    for a in range(images.shape[2]):
        drift = [np.mean([d.rmse for d in metrics.pairwise_drift(list(images[s, :, a]), scene)]) for s in range(n_sets)]
        oks = [
            np.mean([metrics.oks(*metrics.best_person(persons[s, p, a], targets[p], 0.3), targets[p], 0.3)
                     for p in range(len(poses))])
            for s in range(n_sets)
        ]  # fmt: skip
        out[f"arm{a}_drift"], out[f"arm{a}_oks"] = np.array(drift), np.array(oks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--poses", type=int, default=8)
    parser.add_argument("--sampler", default="dpmsolver")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--bf16", action="store_true", help="also a bf16-autocast variant (CPUs with avx512_bf16)")
    parser.add_argument("--note", default="", help="recorded in the JSON (what else shared the CPU)")
    parser.add_argument("--pipeline", default="build/world/pipeline")
    parser.add_argument("--adapter", default="models/world/primary_adapter")
    parser.add_argument("--judge", default="models/world/keypoint_estimator")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampling.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from posescene.evaluation.judges import WorldPoseJudge

    captions, poses = held_out_sets(args.sets, args.poses, first_scene=100_000)
    bank = ModelBank(args.pipeline, {"primary": args.adapter}, resolution=64, device="cpu")
    judge = WorldPoseJudge(args.judge, torch.device("cpu"))
    maps = partial(condition_maps, resolution=64, radius=1, limbs=False, in_channels=1, invert=False)
    seeds = [1000 + s for s in range(args.sets)]
    n = args.sets * args.poses * len(ARMS)

    def stock() -> np.ndarray:
        per_arm = []
        for adapter, scale in ARMS:
            spec = ModelSpec("base") if adapter is None else ModelSpec(f"p{scale}", (adapter,), (scale,))
            jobs = [Job(c, s, p) for c, s in zip(captions, seeds, strict=True) for p in poses]
            per_arm.append(stock_images(bank, spec, jobs, steps=20, guidance_scale=5.0, batch_size=16, maps=maps))
        return np.stack(per_arm, axis=1).reshape(args.sets, args.poses, len(ARMS), 64, 64, 3)

    def batched(sampler: str, steps: int, bf16: bool = False, batch_size: int = 64) -> np.ndarray:
        jobs = [ArmJob(c, s, p, a, sc) for c, s in zip(captions, seeds, strict=True) for p in poses for a, sc in ARMS]
        flat = bank.sample(jobs, steps=steps, guidance_scale=5.0, batch_size=batch_size, maps=maps, sampler=sampler,
                           bf16=bf16, progress=False)  # fmt: skip
        return flat.reshape(args.sets, args.poses, len(ARMS), 64, 64, 3)

    variants = {
        "stock_ddim_20": stock,
        "batched_ddim_20": partial(batched, "ddim", 20),
        f"batched_{args.sampler}_{args.steps}": partial(batched, args.sampler, args.steps),
        f"batched_{args.sampler}_{args.steps}_batch16": partial(batched, args.sampler, args.steps, batch_size=16),
    }
    if args.bf16:
        variants[f"batched_{args.sampler}_{args.steps}_bf16"] = partial(batched, args.sampler, args.steps, True)
    batched(args.sampler, 1)  # warm-up: allocator and kernel set-up are not billed to a variant
    determinism = {}
    if args.bf16:  # bf16 kernels must give the same bits twice, or the evaluation stops being reproducible
        batched(args.sampler, 1, True)
        first, second = batched(args.sampler, 2, True), batched(args.sampler, 2, True)
        determinism["bf16_bitwise_equal_twice"] = bool(np.array_equal(first, second))
    load_before = [round(x, 2) for x in os.getloadavg()]
    seconds, values = {}, {}
    for name, fn in variants.items():
        t0 = time.perf_counter()
        images = fn()
        seconds[name] = time.perf_counter() - t0
        values[name] = measure(images, poses, judge, args.sets)

    ref = values["stock_ddim_20"]
    result: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
        "images": n,
        "arms": ["base", "primary@0.5", "primary@1.0"],
        "images_per_s": {k: round(n / v, 3) for k, v in seconds.items()},
        "speedup_vs_stock": {k: round(seconds["stock_ddim_20"] / v, 2) for k, v in seconds.items()},
        "equivalence": {},
        "determinism": determinism,
        "load_average_1_5_15": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "command": "python " + " ".join(sys.argv),
        "note": args.note,
    }
    for name, vals in values.items():
        rows = {}
        for key, ref_values in ref.items():
            se = float(ref_values.std(ddof=1) / np.sqrt(len(ref_values))) if len(ref_values) > 1 else float("nan")
            diff = float(vals[key].mean() - ref_values.mean())
            rows[key] = {"value": round(float(vals[key].mean()), 5), "diff_vs_ddim20": round(diff, 5),
                         "diff_in_se": round(diff / se, 2) if se > 0 else None}  # fmt: skip
        drift_rank = np.argsort([vals[f"arm{a}_drift"].mean() for a in range(len(ARMS))]).tolist()
        oks_rank = np.argsort([vals[f"arm{a}_oks"].mean() for a in range(len(ARMS))]).tolist()
        rows["ranking_drift"], rows["ranking_oks"] = drift_rank, oks_rank
        result["equivalence"][name] = rows  # type: ignore[index]
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
