"""Scale-out on Dask (``poses.runner: dask``): the pose batches on a ``distributed`` cluster.

The library stays Prefect- and Dask-free: :func:`posescene.poses.run_poses` takes a ``map_fn(fn, batches)``
and keeps the incremental bookkeeping (which images are new, the summary); here that map is
``client.map(posescene.poses.process_batch, batches)`` on a ``LocalCluster`` of ``poses.dask_workers``
worker processes, or on an existing scheduler (``ops.dask_address``). The same code serves both.

Why it is built this way (it was 4x slower than the local pool and did not scale, measured in
``benchmarks/results/poses_workers.json`` before this change, with one Prefect task per batch):

- **Detectors live on the workers.** A :class:`~flows._dask_worker.DetectorPlugin` (a ``WorkerPlugin``,
  in a module without Prefect so that workers never import it) builds
  the detector once per worker process when the worker joins (or when the plugin is registered) and
  keeps it in :func:`posescene.poses.get_detector`'s per-process cache keyed by the detector settings;
  each batch finds it there. A worker that joins a remote cluster later gets it too.
- **Batches are plain function calls**, not Prefect task runs: a Prefect task run per batch made every
  worker import Prefect, open an API client and report several state transitions per batch, which
  serialised the work on the Prefect server. The whole stage is one Prefect task (``poses-dask``,
  retried once on a crash of the machinery, never on a posescene error); each finished batch is
  logged to it. Distributed itself reschedules the batches of a worker that dies.
- **Images are read on the workers** from their paths: a batch is a :class:`posescene.poses.BatchTask`
  (manifest rows and paths, a few kB), never pixels.
- **Batches sized for throughput** (:func:`batch_size_for`): at most ``poses.batch_size``, and small
  enough that every worker slot gets several batches (load balance at the end of the run), but not so
  small that the per-task overhead (milliseconds) shows.

Each batch writes its own part file, so the Parquet dataset is the same (same rows, in any order) as
with the local runner.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from distributed import Client, LocalCluster, as_completed
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows._dask_worker import DetectorPlugin
from posescene import poses
from posescene.config import PosesParams
from posescene.ingest import read_manifest
from tasks.poses import retry_unless_deterministic

BATCHES_PER_SLOT = 4  # the last batches finish unevenly; with 4 per worker the idle tail is <= 1/4 of a share
MIN_BATCH = 8  # below this the per-task overhead (scheduling, one part file) starts to show


def detector_spec(params: PosesParams) -> poses.DetectorSpec:
    """The spec that :func:`posescene.poses.run_poses` builds from the same params (device: its default)."""
    return poses.DetectorSpec(
        params.detector,
        params.weights,
        None,
        params.min_detection_confidence,
        params.min_presence_confidence,
        params.max_persons,
        tuple(params.person_proposals),
    )


def batch_size_for(n_images: int, batch_size: int, slots: int) -> int:
    """Images per batch: ``batch_size`` at most, >= BATCHES_PER_SLOT batches per worker slot, >= MIN_BATCH."""
    balanced = math.ceil(n_images / max(1, slots * BATCHES_PER_SLOT))
    return max(1, min(batch_size, max(MIN_BATCH, balanced)))


def _worker_threads_env(n_workers: int) -> dict[str, str]:
    """The cores shared among the worker processes, as the local pool does (distributed's default is 1).

    A Nanny argument, so it wins over the client's own environment; the worker sets it when it starts,
    before any task imports torch or mediapipe (whose thread pools read it when they load).
    """
    threads = str(max(1, (os.cpu_count() or 1) // max(1, n_workers)))
    return {var: threads for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


@contextmanager
def dask_client(n_workers: int, address: str | None = None) -> Iterator[Client]:
    """A client of the scheduler at ``address``, or of a fresh LocalCluster of ``n_workers`` processes.

    One thread per worker process: the detectors run their own thread pools (TFLite, torch), and one
    process per core is what scales them. The dashboard (when bokeh is installed) gets a free port, not
    8787, so two runs do not collide. A remote cluster is left running; a local one is closed.
    """
    if address:
        with Client(address) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            env=_worker_threads_env(n_workers),
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def client_map(
    client: Client, on_result: Callable[[poses.BatchResult], None] | None = None
) -> Callable[[Callable[..., Any], Sequence[Any]], Iterator[Any]]:
    """A ``map_fn`` for ``run_poses``: ``client.map`` the batches, yield results as they complete.

    On the first failure (or when the consumer stops) the batches not yet finished are cancelled.
    """

    def run(fn: Callable[..., Any], batches: Sequence[Any]) -> Iterator[Any]:
        if not batches:
            return
        futures = client.map(fn, list(batches), pure=False)
        try:
            for future in as_completed(futures):
                result = future.result()
                if on_result is not None:
                    on_result(result)
                yield result
        finally:
            client.cancel([f for f in futures if not f.done()])

    return run


def run_poses_with_client(
    client: Client,
    params: PosesParams,
    manifest: str,
    out_dir: str,
    on_result: Callable[[poses.BatchResult], None] | None = None,
) -> poses.PosesSummary:
    """The poses stage on ``client``'s cluster: detectors set up on every worker, then the batches."""
    poses.check_detector(params.detector, params.weights)  # fail here, not in every worker's plugin
    client.register_plugin(DetectorPlugin(detector_spec(params)), name=f"posescene-detector-{params.detector}")
    slots = max(1, sum(client.nthreads().values()))
    n_images = read_manifest(manifest).num_rows
    return poses.run_poses_with(
        params,
        manifest,
        out_dir,
        batch_size=batch_size_for(n_images, params.batch_size, slots),
        map_fn=client_map(client, on_result),  # the batches run on the cluster (poses.workers unused)
        progress=False,
    )


@task(
    name="poses-dask",
    cache_policy=NO_CACHE,  # the stage is incremental by itself (run_poses skips finished images)
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_deterministic,
)
def poses_dask_task(params: PosesParams, manifest: str, out_dir: str, address: str | None = None) -> dict[str, Any]:
    """All batches of the stage on the Dask cluster; each finished batch is logged to this task run."""
    logger = get_run_logger()

    def log_batch(result: poses.BatchResult) -> None:
        logger.info("batch %s: %d images in %.1f s", result.part, result.images, result.seconds)

    with dask_client(params.dask_workers, address) as client:
        logger.info("Dask cluster: %s (%d worker slots)", client.scheduler.address, sum(client.nthreads().values()))
        return run_poses_with_client(client, params, manifest, out_dir, on_result=log_batch).to_dict()


@flow(name="poses-dask", log_prints=True)
def poses_on_dask(params: PosesParams, manifest: str, out_dir: str, address: str | None = None) -> dict[str, Any]:
    """The poses stage with its batches on a Dask cluster (one Prefect task for the stage)."""
    return poses_dask_task(params, manifest, out_dir, address)


def run_poses_on_dask(params: PosesParams, manifest: str, out_dir: str, address: str | None = None) -> dict[str, Any]:
    """Run :func:`poses_on_dask` (a subflow inside the poses flow): on ``address`` or a LocalCluster."""
    return poses_on_dask(params, manifest, out_dir, address)
