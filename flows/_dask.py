"""Scale-out on Dask (``poses.runner: dask``): the pose batches on a ``distributed`` cluster.

The library stays Prefect- and Dask-free: :func:`posescene.data.poses.run_poses` takes a ``map_fn(fn, batches)``
and keeps the incremental bookkeeping (which images are new, the summary); here that map is
``client.map(posescene.data.poses.process_batch, batches)`` on a ``LocalCluster`` of ``poses.dask_workers``
worker processes, or on an existing scheduler (``ops.dask_address``). The same code serves both.
:func:`dask_runner` is what the poses flow passes to the stage (``posescene.data.poses.poses(params, runner=...)``, run
by the one stage task) when ``poses.runner`` is ``dask`` (the flow decides the runner, once).

Why it is built this way (it was 4x slower than the local pool and did not scale, measured in
``benchmarks/results/poses_workers.json`` before this change, with one Prefect task per batch):

- **Detectors live on the workers.** A :class:`~flows._dask_worker.DetectorPlugin` (a ``WorkerPlugin``,
  in a module without Prefect so that workers never import it), registered with the detector spec the batches
  carry (the one :func:`~posescene.data.poses.run_poses` built), builds
  the detector once per worker process when the worker joins (or when the plugin is registered) and
  keeps it in :func:`posescene.data.poses.get_detector`'s per-process cache keyed by the detector settings;
  each batch finds it there. A worker that joins a remote cluster later gets it too.
- **Batches are plain function calls**, not Prefect task runs: a Prefect task run per batch made every
  worker import Prefect, open an API client and report several state transitions per batch, which
  serialised the work on the Prefect server. The whole stage is one Prefect task (``poses``, the same
  task as the local runner's, retried once on a crash of the machinery, never on a posescene error); each
  finished batch is logged to it. Distributed itself reschedules the batches of a worker that dies.
- **Images are read on the workers** from their paths: a batch is a :class:`posescene.data.poses.BatchTask`
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
from prefect import get_run_logger

from flows._dask_worker import DetectorPlugin
from posescene.config import PosesParams
from posescene.data import poses
from posescene.data.ingest import read_manifest

BATCHES_PER_SLOT = 4  # the last batches finish unevenly; with 4 per worker the idle tail is <= 1/4 of a share
MIN_BATCH = 8  # below this the per-task overhead (scheduling, one part file) starts to show


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

    The detector plugin is registered first, with the spec the batches carry, so every worker builds its
    detector once. On the first failure (or when the consumer stops) the batches not yet finished are cancelled.
    """

    def run(fn: Callable[..., Any], batches: Sequence[Any]) -> Iterator[Any]:
        for spec in dict.fromkeys(batch.detector for batch in batches):
            client.register_plugin(DetectorPlugin(spec), name=f"posescene-detector-{spec.name}")
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


def dask_runner(params: PosesParams, address: str | None = None) -> poses.Runner:
    """The poses stage's runner on Dask: ``runner(manifest)`` opens the cluster (``address``, or a LocalCluster of
    ``poses.dask_workers``) and yields the :func:`posescene.data.poses.run_poses` options that put the batches on
    it (``map_fn``, ``batch_size``, no bar); each finished batch is logged to the task run."""

    @contextmanager
    def runner(manifest: str) -> Iterator[dict[str, Any]]:
        logger = get_run_logger()

        def log_batch(result: poses.BatchResult) -> None:
            logger.info("batch %s: %d images in %.1f s", result.part, result.images, result.seconds)

        with dask_client(params.dask_workers, address) as client:
            slots = max(1, sum(client.nthreads().values()))
            logger.info("Dask cluster: %s (%d worker slots)", client.scheduler.address, slots)
            n_images = read_manifest(manifest).num_rows
            yield {
                "batch_size": batch_size_for(n_images, params.batch_size, slots),
                "map_fn": client_map(client, log_batch),  # the batches run on the cluster (poses.workers unused)
                "progress": False,
            }

    return runner
