"""Markdown links from a flow's summary artifact to its MLflow run and the registry aliases."""

from __future__ import annotations

from typing import Any

from posescene.config import Params
from posescene.tracking import resolve_tracking_uri


def find_key(obj: Any, names: tuple[str, ...]) -> Any:
    """The first value under one of ``names`` anywhere in nested dicts/lists/objects (for run ids)."""
    if isinstance(obj, dict):
        for name in names:
            if obj.get(name):
                return obj[name]
        for value in obj.values():
            found = find_key(value, names)
            if found:
                return found
    elif isinstance(obj, list | tuple):
        for value in obj:
            found = find_key(value, names)
            if found:
                return found
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        return find_key(vars(obj), names)
    return None


def _run_line(uri: str, web: str | None, run_id: str) -> str:
    if not web:
        return f"- MLflow run: `{run_id}` (`mlflow ui --backend-store-uri {uri}`)"
    try:
        import mlflow

        exp_id = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
        return f"- MLflow run: [{run_id}]({web}/#/experiments/{exp_id}/runs/{run_id})"
    except Exception:  # noqa: BLE001 - a link is a courtesy; never fail the pipeline for it
        return f"- MLflow run: [{run_id}]({web}/#/runs/{run_id})"


def _alias_lines(uri: str, web: str | None, model: str) -> list[str]:
    lines: list[str] = []
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        for alias in ("candidate", "champion"):
            try:
                mv = client.get_model_version_by_alias(model, alias)
            except Exception:  # noqa: BLE001 - no such model/alias yet
                continue
            link = f" ([open]({web}/#/models/{model}/versions/{mv.version}))" if web else ""
            lines.append(f"- `models:/{model}@{alias}` → version {mv.version} (run `{mv.run_id}`){link}")
    except Exception:  # noqa: BLE001 - registry unreachable: the summary goes out without the aliases
        pass
    return lines


def mlflow_links(params: Params, results: dict[str, Any]) -> list[str]:
    """Markdown lines pointing at the pipeline's MLflow run and the registry aliases, when known."""
    uri = resolve_tracking_uri(params.mlflow.tracking_uri)
    web = uri.rstrip("/") if uri.startswith(("http://", "https://")) else None
    lines = [f"- MLflow tracking URI: `{uri}`"]
    run_id = find_key(results, ("mlflow_run_id", "run_id"))
    if run_id:
        lines.append(_run_line(uri, web, str(run_id)))
    return lines + _alias_lines(uri, web, params.mlflow.registered_model)
