"""The ``evaluate`` stage: the drift-vs-fidelity frontier of every adapter, the verdict, and the promotion gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_image_artifact, create_markdown_artifact

from flows.mlflow_links import mlflow_links
from flows.run_lock import exclusive
from posescene.config import Params, load_params
from posescene.evaluation.report import summary_markdown
from tasks.stage import stage_task


def evaluate_markdown(summary: dict[str, Any], params: Params) -> str:
    """The flow's artifact: the verdict, the gate, the arms, and where MLflow has the run."""
    run = summary.get("run", {})
    run_file = Path(params.evaluate.out_dir) / "run.json"
    this_run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    lines = [
        "# evaluate: scene drift across poses at matched pose fidelity",
        "",
        f"{run.get('n_sets')} sets x {run.get('n_poses')} poses x {run.get('n_arms')} arms = {run.get('n_images')} "
        f"images at {this_run.get('images_per_s')} images/s.",
        "",
        summary_markdown(summary),
        "## Tracking",
        "",
        *mlflow_links(params, {"mlflow_run_id": this_run.get("mlflow_run_id")}),
        f"- Report: `{Path(params.evaluate.out_dir) / 'report.md'}`",
    ]
    return "\n".join(lines) + "\n"


@flow(name="evaluate", log_prints=True)
@exclusive
def evaluate_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 9: sweep every adapter's conditioning scale, compare at matched fidelity, gate the candidate."""
    from posescene.evaluation.evaluate import evaluate  # torch and diffusers: loaded when the stage runs

    params = load_params(params_path, overrides)
    summary = stage_task("evaluate", evaluate)(params)
    if not summary:  # a rank other than 0 (accelerate launch): its share is in evaluate.store, rank 0 reports
        return summary
    print(f"verdict: {summary['verdict']['text']}")
    print(f"gate: {summary['verdict']['gate']}")
    create_markdown_artifact(
        markdown=evaluate_markdown(summary, params),
        key="evaluate-summary",
        description="posescene evaluate: verdict, gate checks, drift and fidelity per arm",
    )
    frontier = Path(params.evaluate.out_dir, "plots", "frontier.png").resolve()
    create_image_artifact(image_url=frontier.as_uri(), key="evaluate-frontier", description="drift vs fidelity")
    return summary


if __name__ == "__main__":
    evaluate_flow()
