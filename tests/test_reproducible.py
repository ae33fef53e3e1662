"""The cache and train stages give the same bytes whatever torch's thread count was before they ran (issue 26).

Both pin their numerics (posescene.devices.reproducible_math): torch's intra-op threads come from params.yaml
(``cache.threads``, ``train.threads``), not from the caller or the machine's cores, and deterministic
algorithms are on. Without the pin, one and two threads give different latents on these tiny models (oneDNN's
1x1 convolutions sum in a thread-dependent order, up to 5e-7) and so a different adapter.
The loads that feed them go through the libraries' own dtype arguments, so they print no deprecation or cast
warning.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _params import stage_options
from _tables import tiny_trained_world, world_params

from posescene.config import load_params
from tests.conftest import REPO_ROOT

RES = 32
STEPS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return tiny_trained_world(tmp_path_factory.mktemp("repro-world"), RES)


def digests(root: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


def run_cache_and_train(world: dict[str, Any], out: Path, caller_threads: int) -> dict[str, str]:
    """The cache stage's and the train stage's library calls, with torch at ``caller_threads`` when they start."""
    from posescene.data.cache import build_cache
    from posescene.training.train import train

    root = world["root"]
    torch.set_num_threads(caller_threads)
    try:
        build_cache(root / "pairs.parquet", root / "ingested", out / "cache", str(world["pipeline"]), RES,
                    **stage_options(build_cache, "cache", threads=1), progress=False)  # fmt: skip
        assert torch.get_num_threads() == caller_threads  # restored: the pin does not leak into the caller
        params = load_params(
            REPO_ROOT / "params.yaml",
            {
                **world_params(world, RES, out / "cache"),
                "train.out_dir": str(out / "train"),
                "train.checkpoint_dir": str(out / "checkpoints"),
                "train.threads": 1,
                "train.steps": STEPS,
                "train.batch_size": 4,
                "train.warmup_steps": 0,
                "train.checkpoint_every": STEPS,
                "train.validate_every": STEPS,
                "train.validation_poses": 2,
                "train.validation_steps": 2,
                "train.log_every": 2,
                "train.diagnose_every": 2,
                "mlflow.tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
                "mlflow.registered_model": "tiny-repro",
            },
        )
        train(params, progress=False)
        assert torch.get_num_threads() == caller_threads
    finally:
        torch.set_num_threads(1)
    files = ("index.json", "latents.safetensors", "text.safetensors")
    trained = ("secondary_adapter/diffusion_pytorch_model.safetensors", "secondary_adapter/config.json", "loss.csv")
    return {
        **{f"cache/{k}": v for k, v in digests(out / "cache", files).items()},
        **{f"train/{k}": v for k, v in digests(out / "train", trained + (f"validation/step_{STEPS}.png",)).items()},
    }


def test_cache_and_train_bytes_do_not_depend_on_the_callers_threads(world: dict[str, Any], tmp_path: Path) -> None:
    one = run_cache_and_train(world, tmp_path / "one", caller_threads=1)
    two = run_cache_and_train(world, tmp_path / "two", caller_threads=2)
    assert one == two, sorted(k for k in one if one[k] != two[k])


def test_loading_the_frozen_models_warns_nothing(world: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """No `torch_dtype` deprecation (transformers) and no "modules ... kept in float32" cast warning (diffusers)."""
    from transformers.utils import logging as hf_logging

    from posescene.models import load_adapter, load_base

    hf_logging.get_logger("transformers").warning_once.cache_clear()  # an earlier load may have said it already
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any Python warning fails the test too
        load_base(str(world["pipeline"])).freeze().to("cpu")
        load_adapter(str(world["adapter"]), torch.float32).to("cpu")
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in said if "torch_dtype" in m or "kept in float32" in m], said
