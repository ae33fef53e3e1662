"""scripts/ablation.sh plans what it says (--dry runs nothing): the arms' overrides and where the evaluation goes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def _dry(**env: str) -> str:
    venv_bin = str(Path(sys.executable).parent)
    proc = subprocess.run(
        ["bash", "scripts/ablation.sh", "--frontier", "--dry"], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", **env}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_budget_arms_train_longer_and_evaluate_into_their_own_folder() -> None:
    out = _dry(ARMS="steps-1000 steps-3000", FRONTIER_OUT="reports/ablation/budget")
    assert "== train steps-1000: train.steps=1000" in out and "== train steps-3000: train.steps=3000" in out
    assert "scale-whole" not in out  # ARMS limits the arms
    assert "{name: steps-1000, adapter: build/ablation/steps-1000/secondary_adapter, role: " in out
    assert "--set evaluate.out_dir=reports/ablation/budget" in out


def test_default_frontier_folder_and_other_budgets() -> None:
    out = _dry(ARMS="steps-500", BUDGETS="500")
    assert "== train steps-500: train.steps=500" in out
    assert "--set evaluate.out_dir=reports/ablation/frontier" in out


def test_corrections_are_drawn_with_the_primary_in_the_one_evaluation() -> None:
    out = _dry(ARMS="text-correct correct steps-1000 high-noise")
    # an arm that sets its role keeps it; one that does not (steps-*) has params.yaml's, the default's
    assert "{name: text-correct, adapter: build/ablation/text-correct/secondary_adapter, role: correct}" in out
    assert "{name: correct, adapter: build/ablation/correct/secondary_adapter, role: correct}" in out
    assert "{name: high-noise, adapter: build/ablation/high-noise/secondary_adapter, role: replace}" in out
    from posescene.config import load_params

    default_role = load_params(REPO_ROOT / "params.yaml").train.secondary_role
    assert f"{{name: steps-1000, adapter: build/ablation/steps-1000/secondary_adapter, role: {default_role}}}" in out
    assert out.count("posescene evaluate") == 1  # every arm on the same draw, no evaluation of its own


def test_the_corrections_group_runs_text_correct_with_one_change_each() -> None:
    out = _dry(ARMS="corrections")
    for arm in ("high-noise", "guided", "drift-made", "cross-pose"):
        assert f"== train text-correct-{arm}: " in out
        adapter = f"build/ablation/text-correct-{arm}/secondary_adapter"
        assert f"{{name: text-correct-{arm}, adapter: {adapter}, role: correct}}" in out
