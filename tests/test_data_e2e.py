"""The data half end to end: the Prefect flows on a tiny PoseScenes world, and ``dvc repro`` in a repo copy.

One Prefect test server is started for the whole session (each flow run without one would start its own,
~10 s each); the ``dvc repro`` subprocesses are pointed at it with PREFECT_API_URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from _params import write_params

from posescene.config import load_params
from posescene.data.render import STATE_FILE, map_path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DATA_STAGE_FILES = ("posescene/data/ingest.py", "posescene/data/poses.py", "flows/ingest.py", "flows/poses.py")
TINY_SYNTH = {"n_scenes": 4, "poses_per_scene": 3, "size": 64}


def _missing_stages() -> list[str]:
    return [f for f in DATA_STAGE_FILES if not (REPO_ROOT / f).exists()]


needs_all_data_stages = pytest.mark.skipif(
    bool(_missing_stages()), reason=f"data stages not written yet: {', '.join(_missing_stages())}"
)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary Prefect server and result storage for the session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}), prefect_test_harness():
        yield str(PREFECT_API_URL.value())


def _tiny_params(root: Path) -> Path:
    """A params.yaml whose every path is inside ``root`` (absolute, so the flows run from any cwd)."""
    data = root / "data"
    params = {
        "seed": 0,
        "synth": {"out_dir": str(data / "synth"), **TINY_SYNTH},
        "ingest": {"source": str(data / "synth"), "out_dir": str(data / "ingested")},
        "poses": {"out_dir": str(data / "lattices"), "batch_size": 8},
        "pairs": {"out": str(data / "pairs.parquet")},
        "render": {"out_dir": str(data / "maps")},
        "ops": {"lock_path": str(root / "build" / "posescene.lock")},
    }
    return write_params(root / "params.yaml", params)  # params.yaml's defaults with the above


def _check_pairs_and_maps(pairs_path: Path, maps_dir: Path) -> pa.Table:
    pairs = pq.read_table(pairs_path)
    assert pairs.num_rows > 0 and pairs.num_rows % 2 == 0
    assert set(pairs["split"].to_pylist()) == {"train", "heldout"}
    assert pairs.schema.metadata[b"posescene.strategy"] == b"scene"
    for row in pairs.to_pylist():  # every training row has both maps
        assert map_path(maps_dir, row["image_a"], row["person_a"]).is_file()
        assert map_path(maps_dir, row["image_b"], row["person_b"]).is_file()
    return pairs


@needs_all_data_stages
@pytest.mark.e2e  # every data stage as Prefect flows (~20 s here)
def test_data_flow_on_a_tiny_world(tmp_path, prefect_api):
    from flows.data import DATA_STAGES, data_flow
    from flows.pairs import pairs_flow
    from posescene.data.poses import read_lattices

    params_path = _tiny_params(tmp_path)
    results = data_flow(params_path=str(params_path))
    assert tuple(results) == DATA_STAGES
    data = tmp_path / "data"
    lattices = read_lattices(data / "lattices")
    people = lattices.filter(pc.equal(lattices["has_person"], True))
    assert people.num_rows == results["render"]["maps"] == results["render"]["rendered"] > 0
    assert len(list((data / "maps").glob("*.png"))) == people.num_rows
    pairs = _check_pairs_and_maps(data / "pairs.parquet", data / "maps")
    assert results["pairs"]["rows"] == pairs.num_rows
    # scene groups are the synth scenes: 4 scenes x 3 poses -> at most 4 * 3 * 2 ordered pairs
    first = load_params(params_path).synth.first_scene  # pipeline scenes start above the world's training range
    assert set(pairs["group_id"].to_pylist()) <= {f"s{first + i:05d}" for i in range(TINY_SYNTH["n_scenes"])}
    assert results["pairs"]["pairs"] <= 4 * 3 * 2

    # a stage flow on its own, with an override (as a Prefect deployment parameter would pass it)
    caption = pairs_flow(params_path=str(params_path), overrides={"pairs.strategy": "caption"})
    assert caption["strategy"] == "caption"
    assert pq.read_table(data / "pairs.parquet").schema.metadata[b"posescene.strategy"] == b"caption"


def _copy_repo(dest: Path, synth: dict[str, int]) -> None:
    """A minimal copy of the project: code, dvc.yaml, .dvc/config, and params.yaml with a tiny synth."""
    for name in ("posescene", "tasks", "flows"):
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO_ROOT / "dvc.yaml", dest / "dvc.yaml")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["synth"].update(synth)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # synth.coupling null is the world's own coupling: the synth stage reads (and depends on) its training record
    record = Path(params["world"]["shipped_dir"]) / "training_data.json"
    (dest / record).parent.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / record, dest / record)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def _ran(output: str) -> set[str]:
    return {stage for stage in ("synth", "ingest", "poses", "pairs", "render") if f"Running stage '{stage}'" in output}


@pytest.mark.e2e
@needs_all_data_stages
def test_dvc_repro_data_stages(tmp_path, prefect_api):
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo, TINY_SYNTH)
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_API_URL": prefect_api,  # one shared server instead of one per stage
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # result/cache storage of this test only
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    dvc = str(VENV_BIN / "dvc")
    _run(["git", "init", "-q"], repo, env)
    _run([dvc, "init", "-q"], repo, env)
    shutil.copy2(REPO_ROOT / ".dvc" / "config", repo / ".dvc" / "config")

    # render does not depend on pairs (it draws every lattice), so both are targets
    first = _run([dvc, "repro", "pairs", "render"], repo, env)
    assert _ran(first) == {"synth", "ingest", "poses", "pairs", "render"}, first[-3000:]
    _check_pairs_and_maps(repo / "data" / "pairs.parquet", repo / "data" / "maps")
    assert (repo / "data" / "ingested" / "manifest.parquet").is_file()
    assert (repo / "dvc.lock").is_file()

    second = _run([dvc, "repro", "pairs", "render"], repo, env)
    assert _ran(second) == set(), second[-3000:]
    assert "Data and pipelines are up to date" in second

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["render"]["radius"] = params["render"]["radius"] + 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([dvc, "repro", "pairs", "render"], repo, env)
    assert _ran(third) == {"render"}, third[-3000:]
    state = yaml.safe_load((repo / "data" / "maps" / STATE_FILE).read_text())
    assert state["params"]["radius"] == params["render"]["radius"]
