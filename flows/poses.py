from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.run_lock import exclusive
from posescene.config import Params, load_params
from posescene.data.poses import Runner, poses
from tasks.stage import stage_task


def poses_markdown(summary: dict[str, Any]) -> str:
    """The flow's artifact: images processed / skipped, persons found, speed, and a restart if any."""
    rows = [
        ("images in the manifest", summary["images_total"]),
        ("already done (kept)", summary["images_existing"]),
        ("processed now", summary["images_processed"]),
        ("  with a person", summary["images_with_person"]),
        ("  **no person found**", summary["images_without_person"]),
        ("  persons found", summary["persons_found"]),
        ("part files written", summary["parts_written"]),
        ("stale images pruned", summary["pruned_images"]),
        ("images/s", f"{summary['images_per_second']:.1f}"),
    ]
    lines = [f"# poses ({summary['detector']}, beta={summary['beta']})", "", "| | |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if summary["images_without_person"]:
        examples = ", ".join(summary["no_person_examples"][:5])
        lines += ["", f"**No person found in {summary['images_without_person']} images** (e.g. {examples}): if they "
                  "show people, lower poses.min_detection_confidence / poses.min_presence_confidence."]  # fmt: skip
    if summary["restarted"]:
        lines += ["", f"**Started over:** existing lattices had other settings ({summary['restart_reason']})."]
    return "\n".join(lines) + "\n"


def pose_runner(params: Params) -> Runner | None:
    """Where the pose batches run, decided here once: None (the library's own: this process, or a process pool of
    ``poses.workers``), or a Dask cluster (``poses.runner: dask``: ``ops.dask_address``, else a LocalCluster)."""
    if params.poses.runner != "dask":
        return None
    from flows._dask import dask_runner

    return dask_runner(params.poses, params.ops.dask_address)


@flow(name="poses", log_prints=True)
@exclusive
def poses_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 2: pose lattices of the ingested images (incremental Parquet dataset)."""
    params = load_params(params_path, overrides)
    summary = stage_task("poses", poses)(params, runner=pose_runner(params))
    print(
        f"poses ({summary['detector']}): {summary['images_processed']} images processed, "
        f"{summary['images_existing']} already done, {summary['persons_found']} persons found, "
        f"{summary['images_without_person']} images with nobody found "
        f"({summary['images_per_second']:.1f} images/s) -> {params.poses.out_dir}"
    )
    create_markdown_artifact(
        markdown=poses_markdown(summary), key="poses-summary", description="posescene poses: persons found"
    )
    return summary


if __name__ == "__main__":
    poses_flow()
