"""The ``train`` stage: fine-tune S-Ad (docs/method.md steps 3-4) -> build/train, MLflow run, registry ``candidate``."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.run_lock import exclusive
from posescene.config import load_params
from posescene.training.train import train
from tasks.stage import stage_task


def train_markdown(result: dict[str, Any], registered_model: str) -> str:
    """The final metrics, the MLflow run and the registered version, as the flow's Markdown artifact."""
    rows = "\n".join(f"| {key} | {value:.6g} |" for key, value in result["metrics"].items())
    version = result["model_version"]
    lines = [
        "# train (secondary adapter)",
        "",
        "| metric | value |",
        "|---|---:|",
        rows,
        "",
        f"- {result['summary']}" if result.get("summary") else "- effective primary scale: not probed",
        f"- adapter: `{result['adapter_dir']}`",
        f"- resumed from step: {result['resumed_from_step']}",
        f"- MLflow run: {result['mlflow_run_link'] or 'not tracked'}",
    ]
    if version is not None:
        lines.append(f"- registered: `models:/{registered_model}/{version}` (alias `candidate`)")
    return "\n".join(lines) + "\n"


@flow(name="train", log_prints=True)
@exclusive
def train_flow(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    resume: bool = True,
    resume_from: str | None = None,
) -> dict[str, Any]:
    """Train the secondary adapter; a rerun continues from the last checkpoint of the same setup."""
    params = load_params(params_path, overrides)
    result = stage_task("train", train)(params, resume=resume, resume_from=resume_from)
    metrics = result["metrics"]
    print(
        f"train: J {metrics['j']:.4f}, L_diff {metrics['l_diff']:.5f}, L_bal {metrics['l_bal']:.5f} after "
        f"{metrics['steps']} steps -> {result['adapter_dir']}; {result['mlflow_run_link']}"
    )
    create_markdown_artifact(
        markdown=train_markdown(result, params.mlflow.registered_model),
        key="train-summary",
        description="posescene train: final metrics and the MLflow run",
    )
    return result


if __name__ == "__main__":
    train_flow()
