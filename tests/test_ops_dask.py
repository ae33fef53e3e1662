"""poses.runner: dask — the poses flow on a two-worker LocalCluster, and on a remote scheduler with a
worker started as separate processes (``ops.dask_address``), gives the local runner's Parquet rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _params import stage_options, write_params

from flows._dask import BATCHES_PER_SLOT, MIN_BATCH, batch_size_for

e2e = pytest.mark.e2e  # real servers, clusters and subprocesses: tens of seconds


@pytest.mark.parametrize(
    ("n_images", "batch_size", "slots", "expected"),
    [
        (24, 5, 2, 5),  # the params' batch size is an upper bound
        (1000, 64, 2, 64),  # plenty of batches per worker: keep it
        (100, 64, 2, 13),  # 64 would give two batches for two workers: 4 per slot instead
        (20, 64, 4, MIN_BATCH),  # never below MIN_BATCH
        (3, 64, 2, MIN_BATCH),
        (0, 64, 2, MIN_BATCH),
    ],
)
def test_batch_size_for(n_images: int, batch_size: int, slots: int, expected: int) -> None:
    got = batch_size_for(n_images, batch_size, slots)
    assert got == expected
    if got not in (batch_size, MIN_BATCH):
        assert -(-n_images // got) >= slots * BATCHES_PER_SLOT


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary Prefect server (the flow and its Dask-side task runs report to it)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}), prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


def _rows(table: object) -> list[tuple]:
    """Rows as hashable tuples, sorted: the comparison ignores part boundaries and row order."""
    rows = table.to_pylist()  # type: ignore[attr-defined]
    return sorted(tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(r.items())) for r in rows)


@e2e
def test_dask_runner_matches_local(prefect_api: str, synth_dir: Path, tmp_path: Path) -> None:
    from flows.poses import poses_flow
    from posescene.data.ingest import ingest_source
    from posescene.data.poses import read_lattices, run_poses

    ingested = tmp_path / "ingested"
    ingest_source(synth_dir, ingested, **stage_options(ingest_source, "ingest"), progress=False)
    local = run_poses(
        ingested,
        tmp_path / "local",
        **stage_options(run_poses, "poses", detector="groundtruth", batch_size=5),
        progress=False,
    )

    params = tmp_path / "params.yaml"
    write_params(
        params,
        {
            "ingest": {"out_dir": str(ingested)},
            "poses": {"runner": "dask", "dask_workers": 2, "batch_size": 5, "out_dir": str(tmp_path / "dask")},
            "ops": {"lock_path": str(tmp_path / "posescene.lock")},
        },
    )
    summary = poses_flow(str(params))
    assert summary["images_processed"] == local.images_processed == 24
    assert summary["parts_written"] == local.parts_written == 5
    a, b = read_lattices(tmp_path / "local"), read_lattices(tmp_path / "dask")
    assert a.num_rows == b.num_rows > 0
    assert _rows(a) == _rows(b)
    assert a.schema.metadata == b.schema.metadata
    assert sorted(p.name for p in (tmp_path / "local").glob("part-*.parquet")) == sorted(
        p.name for p in (tmp_path / "dask").glob("part-*.parquet")
    )

    # Incremental on Dask too: a rerun finds everything done and submits nothing.
    again = poses_flow(str(params))
    assert again["images_processed"] == 0 and again["images_existing"] == 24


@pytest.fixture()
def remote_scheduler(tmp_path: Path) -> Iterator[str]:
    """``dask scheduler`` and one ``dask worker`` as separate processes (as on a real cluster); yields its address.

    The worker runs from another directory with only the installed packages: whatever the poses stage
    needs on a worker must travel as an importable function and a picklable batch (paths, not pixels).
    """
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    cli = [sys.executable, "-m", "distributed.cli"]
    scheduler = subprocess.Popen(
        [*cli[:2], "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            if time.monotonic() > deadline or scheduler.poll() is not None:
                pytest.fail("dask scheduler did not start")
            time.sleep(0.2)
        worker = subprocess.Popen(
            [*cli[:2], "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file), "--nworkers", "1",
             "--nthreads", "1", "--no-dashboard"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import json

        from distributed import Client

        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@e2e
def test_dask_runner_on_remote_scheduler(
    prefect_api: str, remote_scheduler: str, synth_dir: Path, tmp_path: Path
) -> None:
    from distributed import Client

    from flows.poses import poses_flow
    from posescene.data.ingest import ingest_source
    from posescene.data.poses import read_lattices, run_poses

    ingested = tmp_path / "ingested"
    ingest_source(synth_dir, ingested, **stage_options(ingest_source, "ingest"), progress=False)
    local = run_poses(
        ingested, tmp_path / "local", **stage_options(run_poses, "poses", detector="groundtruth"), progress=False
    )
    params = tmp_path / "params.yaml"
    write_params(
        params,
        {
            "ingest": {"out_dir": str(ingested)},
            "poses": {"runner": "dask", "dask_workers": 3, "out_dir": str(tmp_path / "dask")},  # workers: the cluster's
            "ops": {"lock_path": str(tmp_path / "posescene.lock"), "dask_address": remote_scheduler},
        },
    )
    summary = poses_flow(str(params))
    assert summary["images_processed"] == local.images_processed == 24
    a, b = read_lattices(tmp_path / "local"), read_lattices(tmp_path / "dask")
    assert _rows(a) == _rows(b)
    assert a.schema.metadata == b.schema.metadata

    def worker_state() -> tuple[list[str], bool]:
        import posescene.data.poses as p

        return [spec.name for spec in p._DETECTORS], "prefect" in sys.modules

    with Client(remote_scheduler) as client:  # the remote cluster keeps running; its worker built the detector once
        ((detectors, imported_prefect),) = client.run(worker_state).values()
    assert detectors == ["groundtruth"]
    assert not imported_prefect  # batches are plain function calls: no Prefect on the workers
