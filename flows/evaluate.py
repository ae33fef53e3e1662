"""The ``evaluate`` stage: scene drift across poses and pose fidelity for every model, and the promotion gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.mlflow_links import mlflow_links
from flows.run_lock import exclusive
from posescene.config import Params, load_params
from posescene.evaluate import summary_markdown
from tasks.evaluate import evaluate_task


def evaluate_markdown(summary: dict[str, Any], params: Params) -> str:
    """The flow's artifact: the drift/fidelity table, the promotion decision and where MLflow has the run."""
    run = summary.get("run", {})
    lines = [
        "# evaluate: scene drift across poses",
        "",
        f"{run.get('n_prompts')} held-out prompts x {len(params.evaluate.seeds)} seed(s) x {run.get('n_poses')} poses "
        f"per model, {params.evaluate.steps} DDIM steps; {run.get('n_images')} images at "
        f"{run.get('images_per_s')} images/s. Lower drift is better; PCK is pose fidelity.",
        "",
        summary_markdown(summary),
        "## Tracking",
        "",
        *mlflow_links(params, {"mlflow_run_id": run.get("mlflow_run_id")}),
        f"- Report: `{Path(params.evaluate.out_dir) / 'report.md'}`",
    ]
    return "\n".join(lines) + "\n"


@flow(name="evaluate", log_prints=True)
@exclusive
def evaluate_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 9: evaluate base/primary/secondary (+ both, ablations) and promote the candidate if it earns it."""
    params = load_params(params_path, overrides)
    summary = evaluate_task(params)
    for name, values in summary.items():
        if name not in ("promotion", "run"):
            print(
                f"evaluate {name}: drift_rmse {values.get('drift_rmse')}, drift_ssim {values.get('drift_ssim')}, "
                f"pck {values.get('pck')}"
            )
    promo = summary["promotion"]
    print(f"promotion: {promo['status']} (candidate version {promo['candidate_version']}): {promo['reason']}")
    create_markdown_artifact(
        markdown=evaluate_markdown(summary, params),
        key="evaluate-summary",
        description="posescene evaluate: scene drift, pose fidelity and the promotion decision",
    )
    return summary


if __name__ == "__main__":
    evaluate_flow()
