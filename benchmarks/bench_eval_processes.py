"""The evaluation's sampling in 1 process against 2 processes (posescene.shards), on this CPU.

The job list is the default evaluation's, cut to ``--prompts`` held-out prompts: every arm of ``arm_plan`` for
the primary adapter (base, scales, mask, steps, inpaint, placebo) x the 8 held-out poses, drawn by the world
model at 64 px with the stage's sampler settings (params.yaml ``evaluate``), batch 16. Configurations:

- ``1x2``: one process, torch at 2 threads (what ``dvc repro`` does on this 2-core machine);
- ``2x1``: two processes (``torchrun --nproc_per_node 2``, ``ACCELERATE_USE_CPU=1``, the launch of
  docs/operations.md), torch at 1 thread each, so the total stays 2;
- ``1x1``: one process at 1 thread: the reference whose bytes ``2x1`` must equal (on a CPU the images depend on
  torch's thread count, not on the number of processes).

Each run draws into a fresh store. ``sample_s``: from a barrier after the models are loaded to rank 0 holding
every image (what sharding speeds up); ``wall_s``: the whole launch, start-up and model loading included.
The machine's load average is recorded: on a shared machine the ratio is only as good as the idle time it had.

    python benchmarks/bench_eval_processes.py [--prompts 2] [--repeats 1] [--note "..."]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "eval_processes.json"


def worker(out: Path, store: Path, prompts: int) -> None:
    """One rank: load the world, build the jobs, wait for the others, sample into ``store``; rank 0 reports."""
    from functools import partial

    import numpy as np
    import torch

    from posescene.config import default_params
    from posescene.evaluation import metrics
    from posescene.evaluation.evaluate import arm_job, arm_plan, load_heldout
    from posescene.sampling.maps import condition_maps
    from posescene.sampling.sampler import ModelBank, distinct_rows
    from posescene.shards import BatchStore, Shard

    params = default_params({"evaluate.n_prompts": prompts, "evaluate.seeds": [0]})
    ev, res = params.evaluate, params.model.resolution
    shard = Shard.from_env()
    heldout = load_heldout(params)
    dirs = {"primary": params.model.primary_adapter}
    arms = arm_plan(params, dirs)
    jobs = [arm_job(s.prompt.caption, s.noise_seed, p, a, k) for s in heldout.sets for p in heldout.poses
            for a, k in arms]  # fmt: skip
    bank = ModelBank(params.model.base, dirs, resolution=res, in_channels=params.model.adapter_in_channels,
                     device="cpu")  # fmt: skip
    maps = partial(condition_maps, resolution=res, radius=params.render.radius, limbs=params.render.limbs,
                   in_channels=params.model.adapter_in_channels, invert=params.model.adapter_invert)  # fmt: skip

    def region(pose: Any, margin: float) -> np.ndarray:
        return metrics.person_mask([pose.keypoints_at(res, heldout.beta)], (res, res), margin)

    shard.wait()
    t0 = time.perf_counter()
    images = bank.sample(jobs, steps=ev.steps, guidance_scale=ev.guidance_scale, batch_size=ev.batch_size, maps=maps,
                         sampler=ev.sampler, bf16=ev.bf16, region=region, progress=False, store=BatchStore(store),
                         shard=shard)  # fmt: skip
    seconds = time.perf_counter() - t0
    if images is not None:
        report = {"sample_s": seconds, "images": len(jobs), "distinct_images": len(distinct_rows(jobs)[0]),
                  "threads_per_process": torch.get_num_threads(), "processes": shard.world,
                  "images_sha256": hashlib.sha256(images.tobytes()).hexdigest()}  # fmt: skip
        out.write_text(json.dumps(report))


def launch(processes: int, threads: int, prompts: int, tmp: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    out, store = tmp / f"{processes}x{threads}.json", tmp / f"store_{processes}x{threads}"
    script = [str(Path(__file__).resolve()), "--worker", str(out), "--store", str(store), "--prompts", str(prompts)]
    if processes == 1:
        env.pop("WORLD_SIZE", None)
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               *script]  # fmt: skip
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - t0
    report = json.loads(out.read_text())
    return {
        **report,
        "wall_s": wall,
        "loadavg_1min_before": load,
        "images_per_s": report["images"] / report["sample_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.store, args.prompts)
        return
    runs: dict[str, list[dict[str, Any]]] = {"1x2": [], "2x1": [], "1x1": []}
    for _ in range(args.repeats):
        for name in runs:  # interleaved, so a change of the machine's load hits every configuration
            processes, threads = (int(x) for x in name.split("x"))
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(launch(processes, threads, args.prompts, Path(tmp)))
                print(name, runs[name][-1], flush=True)
    best = {name: min(r["sample_s"] for r in rs) for name, rs in runs.items()}
    result = {
        "command": " ".join(["python benchmarks/bench_eval_processes.py", *sys.argv[1:]]),
        "note": args.note,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "python": platform.python_version()},
        "runs": runs,
        "speedup_2x1_over_1x2_sample": round(best["1x2"] / best["2x1"], 3),
        "speedup_2x1_over_1x2_wall": round(
            min(r["wall_s"] for r in runs["1x2"]) / min(r["wall_s"] for r in runs["2x1"]), 3
        ),  # fmt: skip
        "bytes_2x1_equal_1x1": runs["2x1"][0]["images_sha256"] == runs["1x1"][0]["images_sha256"],
        "bytes_1x2_equal_1x1": runs["1x2"][0]["images_sha256"] == runs["1x1"][0]["images_sha256"],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
