"""poses.runner: dask — the poses flow on a two-worker LocalCluster gives the local runner's Parquet rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _params import stage_options, write_params

pytestmark = pytest.mark.e2e  # real servers, clusters and subprocesses: tens of seconds


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


def test_dask_runner_matches_local(prefect_api: str, synth_dir: Path, tmp_path: Path) -> None:
    from flows.poses import poses_flow
    from posescene.ingest import ingest
    from posescene.poses import read_lattices, run_poses

    ingested = tmp_path / "ingested"
    ingest(synth_dir, ingested, **stage_options(ingest, "ingest"), progress=False)
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
