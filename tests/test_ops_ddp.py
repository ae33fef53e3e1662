"""Data-parallel training for real: ``train()`` as two CPU ranks (gloo) under torchrun, on tiny models and data.

What DDP adds over one process is checked: both ranks ran (the global batch is twice the per-rank batch),
they agreed on the weights (rank 0 saves one adapter, which is valid, finite and moved away from P-Ad), and
the registry got its version from rank 0 only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _tables import tiny_trained_world, world_params

pytestmark = pytest.mark.e2e

RES = 32
STEPS = 4
PER_RANK_BATCH = 4
REPO_ROOT = Path(__file__).resolve().parents[1]
# torchrun, not `accelerate launch --cpu --num_processes 2`: on a CPU that launcher starts ONE process (it
# spreads CPU ranks only through mpirun). Accelerate makes the torchrun ranks one gloo group only when told
# to use the CPU (ACCELERATE_USE_CPU); without it each rank would train alone as "rank 0 of 1".
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny models and a tiny PoseScenes set through every data stage and the cache (as tests/test_train.py)."""
    return tiny_trained_world(tmp_path_factory.mktemp("ddp-world"), RES)


def test_two_process_cpu_training_saves_a_valid_adapter(world: dict[str, Any], tmp_path: Path) -> None:
    from diffusers import T2IAdapter
    from mlflow import MlflowClient

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = {
        **world_params(world, RES),
        "train.out_dir": str(tmp_path / "out"),
        "train.checkpoint_dir": str(tmp_path / "checkpoints"),
        "train.steps": STEPS,
        "train.batch_size": PER_RANK_BATCH,
        "train.lr": 3e-3,
        "train.warmup_steps": 0,
        "train.checkpoint_every": STEPS // 2,  # a checkpoint mid-run: rank 0 writes while rank 1 waits
        "train.validate_every": STEPS,
        "train.validation_poses": 2,
        "train.validation_steps": 2,
        "train.log_every": 2,
        "mlflow.tracking_uri": db,
        "mlflow.experiment": "test-ddp",
        "mlflow.registered_model": "ddp-secondary",
    }
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",  # two ranks on a shared 2-core box: more threads than cores is far slower
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    overrides_path = tmp_path / "overrides.json"
    overrides_path.write_text(json.dumps(overrides))
    proc = subprocess.run(
        [*LAUNCH, str(REPO_ROOT / "tests" / "_ddp_train.py"), str(overrides_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    result = json.loads((tmp_path / "result.json").read_text())
    metrics = result["metrics"]
    adapter_dir = result["adapter_dir"]

    # Both ranks trained: one optimizer step consumed PER_RANK_BATCH rows on each of the 2 ranks.
    assert metrics["steps"] == STEPS and metrics["batch_size"] == 2 * PER_RANK_BATCH
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("l_diff", "l_bal", "j"))
    assert result["world_size"] == 2
    loss_rows = (tmp_path / "out" / "loss.csv").read_text().splitlines()
    assert len(loss_rows) == 1 + STEPS

    # The adapter rank 0 saved: a stock diffusers T2IAdapter, finite, and trained away from P-Ad.
    secondary = T2IAdapter.from_pretrained(adapter_dir, use_safetensors=True)
    primary = T2IAdapter.from_pretrained(world["adapter"], use_safetensors=True)
    s_state, p_state = secondary.state_dict(), primary.state_dict()
    assert s_state.keys() == p_state.keys()
    assert all(torch.isfinite(v).all() for v in s_state.values())
    moved = max(float((s_state[k] - p_state[k]).abs().max()) for k in s_state)
    assert moved > 1e-5, "the secondary adapter is still the primary: no update was applied"
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert checkpoints == [f"step_{STEPS // 2}", f"step_{STEPS}"]

    # Only rank 0 tracked: one run, one registered version aliased candidate.
    client = MlflowClient(tracking_uri=db, registry_uri=db)
    versions = client.search_model_versions("name='ddp-secondary'")
    assert [str(v.version) for v in versions] == [result["model_version"]] == ["1"]
    run_ids = {r.info.run_id for r in client.search_runs([client.get_experiment_by_name("test-ddp").experiment_id])}
    assert client.get_model_version_by_alias("ddp-secondary", "candidate").run_id in run_ids and len(run_ids) == 1
