"""Shared fixtures. No test downloads anything: HF_HUB_OFFLINE is set before any HF import."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


_MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
)


@pytest.fixture(autouse=True)
def _no_mlflow_env_leaks() -> Iterator[None]:
    """mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI, so a
    later test's child processes (Prefect-served flows, fresh model loaders) would inherit a URI of an earlier
    test's temp store or stopped server. Each test starts without them and leaves none behind."""
    saved = {key: os.environ.pop(key, None) for key in _MLFLOW_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models on a shared 2-core machine: two OpenMP threads waiting on each other made generation
    ~100x slower than one thread (measured), so every test runs torch single-threaded."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PoseScenes imagefolder (6 scenes x 4 poses at 64 px), shared read-only by tests."""
    from posescene.data.synth import generate

    return generate(
        tmp_path_factory.mktemp("synth") / "synth", 6, 4, 64, seed=0, first_scene=0, coupling=0.0, progress=False
    )
