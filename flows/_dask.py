"""Scale-out on Dask through Prefect's ``DaskTaskRunner`` (``poses.runner: dask``).

The library stays Prefect- and Dask-free: :func:`posescene.poses.run_poses` takes a ``map_fn(fn, batches)``
and keeps the incremental bookkeeping (which images are new, the summary); here each batch becomes one
Prefect task run (visible in the UI, retried on a crashed worker) submitted to the flow's task runner, a
``DaskTaskRunner`` on a ``LocalCluster`` of ``poses.dask_workers`` worker processes or on an existing
scheduler (``ops.dask_address``). Each batch writes its own part file, so the Parquet dataset is the same
(same rows, in any order) as with the local runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect_dask import DaskTaskRunner

from posescene import poses
from posescene.config import PosesParams
from tasks.poses import retry_unless_deterministic


def dask_task_runner(n_workers: int, address: str | None = None) -> DaskTaskRunner:
    """A DaskTaskRunner: on the scheduler at ``address``, or on a fresh LocalCluster of ``n_workers`` processes.

    One thread per worker process: the detectors run their own thread pools (TFLite, torch), and one
    process per core is what scales them. The dashboard (when bokeh is installed) gets a free port, not
    8787 (``dashboard_address=None`` still means the default 8787), so two runs do not collide.
    """
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
        },
    )


@task(
    name="poses-batch",
    cache_policy=NO_CACHE,  # the stage is incremental by itself (run_poses skips finished images)
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_deterministic,
)
def poses_batch_task(batch: poses.BatchTask) -> poses.BatchResult:
    """One batch of images -> one lattice part file, on whichever Dask worker picks it up."""
    return poses.process_batch(batch)


def prefect_map(task_obj: Any) -> Callable[[Callable[..., Any], Sequence[Any]], Iterator[Any]]:
    """A ``map_fn`` for ``run_poses``: submit one ``task_obj`` run per batch, yield results as they complete."""

    def run(fn: Callable[..., Any], batches: Sequence[Any]) -> Iterator[Any]:
        del fn  # task_obj wraps it (a Prefect task pickles to the workers; a bare function would not be tracked)
        futures = [task_obj.submit(batch) for batch in batches]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # first failure (or the consumer stopped): do not start the remaining batches
            for future in futures:
                wrapped = getattr(future, "wrapped_future", None)  # the distributed.Future under a PrefectDaskFuture
                if wrapped is not None and hasattr(wrapped, "cancel"):
                    wrapped.cancel()
            raise

    return run


@flow(name="poses-dask", log_prints=True)
def poses_on_dask(params: PosesParams, manifest: str, out_dir: str) -> dict[str, Any]:
    """The poses stage with its batches as Prefect tasks on the flow's (Dask) task runner."""
    summary = poses.run_poses(
        manifest,
        out_dir,
        detector=params.detector,
        weights=params.weights,
        beta=params.beta,
        min_score=params.min_score,
        min_detection_confidence=params.min_detection_confidence,
        min_presence_confidence=params.min_presence_confidence,
        max_persons=params.max_persons,
        batch_size=params.batch_size,
        workers=params.workers,  # unused here: map_fn runs the batches (on the flow's Dask task runner)
        map_fn=prefect_map(poses_batch_task),
        progress=False,
    )
    return summary.to_dict()


def run_poses_on_dask(params: PosesParams, manifest: str, out_dir: str, address: str | None = None) -> dict[str, Any]:
    """Run :func:`poses_on_dask` as a subflow with a DaskTaskRunner built from the params."""
    runner = dask_task_runner(params.dask_workers, address)
    return poses_on_dask.with_options(task_runner=runner)(params, manifest, out_dir)
