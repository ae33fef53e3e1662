"""Training checkpoints: list, save (atomic) and load everything a resumed run needs to continue exactly.

A checkpoint is a directory ``<checkpoint_dir>/step_<n>/`` with
- ``secondary_adapter/``: S-Ad in diffusers format (loadable on its own with ``T2IAdapter.from_pretrained``),
- ``training_state.pt``: optimizer, learning-rate schedule, balance state (running means or log-variances),
  the grad scaler and the torch RNG states,
- ``trainer_state.json``: the run's fingerprint, the sample position, the loss history, the MLflow run id,
  timings and the python/numpy RNG states.

It is written into a temporary sibling and renamed, so a crash mid-write never leaves a checkpoint that looks
complete; only the last :data:`KEEP_CHECKPOINTS` of one setup (fingerprint) are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import T2IAdapter

from posescene.errors import InputDataError
from posescene.io import atomic_path

KEEP_CHECKPOINTS = 2
STATE_FILE = "trainer_state.json"


def checkpoints(root: str | Path, fingerprint: str | None = None) -> list[tuple[int, Path]]:
    """Complete checkpoints (step_<n> dirs; temp dirs of an interrupted write are hidden), by step.

    With ``fingerprint``, only those made by that setup (see ``posescene.training.train.run_fingerprint``).
    """
    found = []
    for path in Path(root).glob("step_*"):
        suffix = path.name[len("step_") :]
        if not (path.is_dir() and suffix.isdigit() and (path / STATE_FILE).is_file()):
            continue
        if fingerprint is not None:
            try:
                if json.loads((path / STATE_FILE).read_text()).get("fingerprint") != fingerprint:
                    continue
            except (OSError, json.JSONDecodeError):
                continue
        found.append((int(suffix), path))
    return sorted(found)


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / STATE_FILE).is_file()


def remove_checkpoints(found: list[tuple[int, Path]]) -> None:
    for _, path in found:
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    root: str | Path,
    step: int,
    secondary: T2IAdapter,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    balance: torch.nn.Module,
    accelerator: Accelerator,
    state: dict[str, Any],
) -> Path:
    """Write step_<n>/ atomically (temp dir + rename) and keep only the last KEEP_CHECKPOINTS."""
    path = Path(root) / f"step_{step}"
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        secondary.save_pretrained(tmp / "secondary_adapter", safe_serialization=True)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "balance": balance.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            tmp / "training_state.pt",
        )
        rng = {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state())}
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "rng": rng}))
    remove_checkpoints(checkpoints(root, state["fingerprint"])[:-KEEP_CHECKPOINTS])
    return path


def load_checkpoint(
    path: str | Path,
    secondary: T2IAdapter,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    balance: torch.nn.Module,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote; returns the trainer state (step, position, ...)."""
    path = Path(path)
    try:
        saved = json.loads((path / STATE_FILE).read_text())
        weights = T2IAdapter.from_pretrained(path / "secondary_adapter", use_safetensors=True)
        blob = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{path}: not a readable training checkpoint ({exc}).") from exc
    secondary.load_state_dict(weights.state_dict())
    optimizer.load_state_dict(blob["optimizer"])
    lr_scheduler.load_state_dict(blob["lr_scheduler"])
    balance.load_state_dict(blob["balance"])
    if blob["scaler"] is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(blob["scaler"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    restore_rng(saved["rng"])
    return saved


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def restore_rng(rng: dict[str, Any]) -> None:
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = rng["numpy"]
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), *npy[2:]))
