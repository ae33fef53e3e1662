"""Throughput of the poses stage with 1 and 2 workers: the local process pool and Dask, same images.

Every configuration runs ``posescene.data.poses.run_poses`` on the same ingested PoseScenes images (default:
200 images at 256 px) with the MediaPipe detector (groundtruth is too cheap to measure), into a fresh
output directory:

- ``local-serial``: ``poses.workers: 1`` (batches in this process, the default);
- ``local-pool-1`` / ``local-pool-2``: the spawn process pool that ``poses.workers: N`` uses;
- ``dask-1`` / ``dask-2``: ``poses.runner: dask`` through the flow's own code (the stage task
  ``tasks.stage.stage_task("poses", posescene.data.poses.poses)`` with ``flows._dask.dask_runner``:
  the batches as ``client.map`` calls on a LocalCluster of N worker processes, the detector built once per
  worker by a WorkerPlugin before the batches start).

Two numbers per run: ``images_per_s`` as the stage reports it (from the first batch submitted to the last
result; it includes each worker's detector start-up, but not the Dask cluster's start) and ``wall_s`` of the
whole call (pool or cluster start-up and tear-down included). A Prefect server is needed for the Dask runs
(PREFECT_API_URL, else Prefect starts a temporary one, warmed up before timing).

    python benchmarks/bench_poses_workers.py [--images 200] [--size 256] [--batch-size 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from posescene.io import write_json_atomic

POSES_PER_SCENE = 4


def make_images(root: Path, n_images: int, size: int) -> Path:
    """PoseScenes images, ingested (the poses stage reads the ingest manifest)."""
    from posescene.data.ingest import ingest_source
    from posescene.data.synth import generate

    n_scenes = -(-n_images // POSES_PER_SCENE)
    from posescene.config import default_params

    p = default_params().ingest
    synth = generate(
        root / "synth", n_scenes, POSES_PER_SCENE, size, seed=0, first_scene=0, coupling=0.0, progress=False
    )
    ingest_source(synth, root / "ingested", source_kind=p.source_kind, max_pixels=p.max_pixels, min_side=p.min_side,
           progress=False)  # fmt: skip
    return root / "ingested"


def runners(batch_size: int) -> dict[str, Callable[[Path, Path], dict[str, Any]]]:
    from flows._dask import dask_runner
    from posescene.config import Params, default_params
    from posescene.data.poses import Runner, poses, process_pool_map
    from tasks.stage import stage_task

    def params(manifest: Path, out: Path, **overrides: Any) -> Params:
        settings = {"poses.detector": "mediapipe", "poses.batch_size": batch_size, **overrides}
        return default_params({**settings, "ingest.out_dir": str(manifest), "poses.out_dir": str(out)})

    def local(workers: int | None, pool: bool) -> Callable[[Path, Path], dict[str, Any]]:
        def run(manifest: Path, out: Path) -> dict[str, Any]:
            runner: Runner | None = None
            if pool:  # the pool even for one worker (``local-pool-1``): what a pool costs over this process
                runner = lambda _: nullcontext({"map_fn": process_pool_map(workers or 1)})  # noqa: E731
            on_host = params(manifest, out, **{"poses.workers": workers or 1})
            return poses(on_host, progress=False, runner=runner).as_dict()

        return run

    def dask(workers: int) -> Callable[[Path, Path], dict[str, Any]]:
        def run(manifest: Path, out: Path) -> dict[str, Any]:
            on_dask = params(manifest, out, **{"poses.runner": "dask", "poses.dask_workers": workers})
            return stage_task("poses", poses)(on_dask, runner=dask_runner(on_dask.poses))

        return run

    return {
        "local-serial": local(None, pool=False),
        "local-pool-1": local(1, pool=True),
        "local-pool-2": local(2, pool=True),
        "dask-1": dask(1),
        "dask-2": dask(2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. what else shared the CPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/poses_workers.json"))
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a loaded CPU starts it slowly

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-poses-"))
    try:
        manifest = make_images(work, args.images, args.size)
        configs = runners(args.batch_size)
        chosen = args.only or list(configs)
        if any(name.startswith("dask") for name in chosen):  # Prefect (temporary) server and imports, untimed
            configs["dask-1"](make_images(work / "warmup", POSES_PER_SCENE, args.size), work / "warmup" / "out")
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        for repeat in range(args.repeats):
            for name in chosen:  # interleaved, so a load spike from another job hits every configuration alike
                out = work / f"{name}-{repeat}"
                start = time.perf_counter()
                summary = configs[name](manifest, out)
                wall = time.perf_counter() - start
                assert summary["images_processed"] == summary["images_total"] > 0, summary
                runs[name].append({"images_per_s": summary["images_per_second"], "wall_s": wall})
                print(f"{name:>13} #{repeat}: {summary['images_per_second']:7.1f} images/s, {wall:6.1f} s wall "
                      f"({summary['images_processed']} images, {summary['persons_found']} persons)")  # fmt: skip
                shutil.rmtree(out)
        n_images = summary["images_processed"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {
        name: {
            "images_per_s_median": round(statistics.median(r["images_per_s"] for r in rs), 2),
            "images_per_s_best": round(max(r["images_per_s"] for r in rs), 2),
            "wall_s_median": round(statistics.median(r["wall_s"] for r in rs), 2),
            "wall_images_per_s_median": round(n_images / statistics.median(r["wall_s"] for r in rs), 2),
            "runs": rs,
        }
        for name, rs in runs.items()
    }

    def ratio(a: str, b: str, key: str) -> float | None:
        return round(best[a][key] / best[b][key], 3) if a in best and b in best else None

    result = {
        "images": n_images,
        "size": args.size,
        "batch_size": args.batch_size,
        "detector": "mediapipe",
        "repeats": args.repeats,
        "configs": best,
        "speedup_2_vs_1": {
            "local_pool": ratio("local-pool-2", "local-pool-1", "images_per_s_median"),
            "local_pool2_vs_serial": ratio("local-pool-2", "local-serial", "images_per_s_median"),
            "dask": ratio("dask-2", "dask-1", "images_per_s_median"),
            "local_pool_wall": ratio("local-pool-2", "local-pool-1", "wall_images_per_s_median"),
            "dask_wall": ratio("dask-2", "dask-1", "wall_images_per_s_median"),
        },
        "targets": {
            "dask2_vs_dask1_min": 1.6,
            "dask2_vs_local_pool2_min": 0.9,
            "dask2_vs_dask1": ratio("dask-2", "dask-1", "images_per_s_median"),
            "dask2_vs_local_pool2": ratio("dask-2", "local-pool-2", "images_per_s_median"),
            "dask2_vs_dask1_wall": ratio("dask-2", "dask-1", "wall_images_per_s_median"),
            "dask2_vs_local_pool2_wall": ratio("dask-2", "local-pool-2", "wall_images_per_s_median"),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average_1_5_15": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },  # fmt: skip
        "command": "python " + " ".join(sys.argv),
        "note": args.note,
    }
    write_json_atomic(args.out, result)
    print(json.dumps({**result["speedup_2_vs_1"], **result["targets"]}, indent=2))
    load = result["load_average_1_5_15"]
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
