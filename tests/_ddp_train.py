"""Entry point of tests/test_ops_ddp.py: ``posescene.training.train.train`` under a multi-process launcher.

Usage (what the test runs): ``ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 tests/_ddp_train.py
overrides.json``. The overrides (dotted params.yaml keys) come from a JSON file; rank 0 writes the result beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(overrides_path: str) -> None:
    from accelerate import PartialState

    from posescene.config import load_params
    from posescene.training.train import train

    torch.set_num_threads(1)  # two ranks on a shared 2-core box: more threads than cores is far slower
    overrides = json.loads(Path(overrides_path).read_text())
    result = train(load_params(REPO_ROOT / "params.yaml", overrides), resume=False, progress=False)
    state = PartialState()  # the process group train() ran in (what the ranks agreed on, not the env)
    if state.process_index == 0:
        out = {
            "world_size": state.num_processes,
            "metrics": result.metrics,
            "adapter_dir": str(result.adapter_dir),
            "run_id": result.run_id,
            "model_version": result.model_version,
        }
        Path(overrides_path).with_name("result.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
