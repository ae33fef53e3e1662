"""MLflow tracking with an embedded default: no server needed, any server when configured.

Where runs go: ``mlflow.tracking_uri`` in params.yaml, else the ``MLFLOW_TRACKING_URI`` environment
variable, else ``sqlite:///<project>/mlflow.db`` with artifacts under ``<project>/mlartifacts``. A SQLite
store (unlike the plain ``./mlruns`` file store) also holds the model registry, so registering the
secondary adapter and giving it an alias works on a laptop with nothing running.

This module is the project's one door to MLflow: the stages call these functions (or the client they return),
never ``mlflow`` itself (the pyfunc model, an MLflow class by nature, aside).

Each training run gets: every validated param (flattened, dotted keys), the git commit, the DVC md5 of
the data it read (from ``dvc.lock``), per-step metrics, system metrics (when psutil is installed and
``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is not ``false``), artifacts, and a registered model version.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from posescene.config import MlflowParams, Params
from posescene.errors import ConfigError

LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"


def resolve_tracking_uri(configured: str | None, root: str | Path | None = None) -> str:
    """params.yaml's URI, else $MLFLOW_TRACKING_URI, else the embedded SQLite store under ``root``."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(root or Path.cwd()).resolve()
    return f"sqlite:///{root / LOCAL_DB}"


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store live beside its database (``<db dir>/mlartifacts/<experiment>``).

    Without this MLflow would put them in ``./mlruns`` of whatever directory the run started in. Servers
    (http/https/databricks) choose their own artifact store, so None there.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///") :]).resolve()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    return (db.parent / LOCAL_ARTIFACTS / safe).as_uri()


def configure(params: MlflowParams, root: str | Path | None = None) -> str:
    """Point MLflow (tracking and registry) at the resolved URI and make sure the experiment exists."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(params.tracking_uri, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        if mlflow.get_experiment_by_name(params.experiment) is None:
            mlflow.create_experiment(params.experiment, artifact_location=artifact_location(uri, params.experiment))
        mlflow.set_experiment(params.experiment)
    except MlflowException as exc:
        raise ConfigError(
            f"MLflow tracking at {uri!r} is unusable ({exc}). Fix mlflow.tracking_uri in params.yaml or "
            "MLFLOW_TRACKING_URI, or set both to null/unset for the embedded store (sqlite:///mlflow.db)."
        ) from exc
    return uri


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> {"train.lr": "0.0001", ...}; lists and dicts below leaves become JSON."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = str(value)
    return out


def git_commit(root: str | Path | None = None) -> dict[str, str]:
    """``git.commit`` (and ``git.dirty``) tags; nothing when git or the repository is missing."""
    cwd = str(root or Path.cwd())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def dvc_data_hashes(root: str | Path | None = None) -> dict[str, str]:
    """``dvc.<path>`` -> md5 of every data/ path recorded in dvc.lock (what the upstream stages produced)."""
    lock = Path(root or Path.cwd()) / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except yaml.YAMLError:
        return {}
    hashes: dict[str, str] = {}
    for stage in stages.values():
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            path, md5 = entry.get("path", ""), entry.get("md5")
            if md5 and path.startswith("data/"):
                hashes[f"dvc.{path}"] = md5
    return hashes


def system_metrics_enabled() -> bool:
    """System metrics need psutil; tests (and users) switch them off with the MLflow env variable."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0", "no"):
        return False
    return importlib.util.find_spec("psutil") is not None


@contextlib.contextmanager
def start_run(params: Params, run_id: str | None = None, run_name: str = "train") -> Iterator[Any]:
    """An MLflow run with every param and the provenance tags; ``run_id`` continues a resumed run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure(params.mlflow)
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except MlflowException:
            run_id = None  # the checkpoint came from another tracking store: start a new run
    with mlflow.start_run(run_id=run_id, run_name=run_name, log_system_metrics=system_metrics_enabled()) as run:
        flat = flatten(params.model_dump(mode="json"))
        already = run.data.params
        new = {k: v[:6000] for k, v in flat.items() if k not in already}
        for start in range(0, len(new), 100):
            mlflow.log_params(dict(list(new.items())[start : start + 100]))
        changed = {f"resumed_with.{k}": v for k, v in flat.items() if k in already and already[k] != v[:6000]}
        mlflow.set_tags({**git_commit(), **dvc_data_hashes(), **changed})
        yield run


def log_rows(run_id: str, rows: Sequence[Mapping[str, float]], step_key: str = "step") -> None:
    """Per-step metrics of several steps in one request (log_batch), instead of one request per value."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, int(row[step_key]))
        for row in rows
        for key, value in row.items()
        if key != step_key
    ]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Metrics of the active run (the fluent run of :func:`start_run`)."""
    import mlflow

    mlflow.log_metrics(dict(metrics), step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """One file into the active run's artifacts (under ``artifact_path``)."""
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)


def log_artifacts(directory: str | Path, artifact_path: str | None = None) -> None:
    """A directory's files into the active run's artifacts (under ``artifact_path``)."""
    import mlflow

    mlflow.log_artifacts(str(directory), artifact_path)


def run_link(run: Any) -> str:
    """A link to the run in the MLflow UI (for an http server) or where to find it (embedded store)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    exp, rid = run.info.experiment_id, run.info.run_id
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{rid}"
    return f"run {rid} in experiment {exp} at {uri} (view: mlflow ui --backend-store-uri {uri})"


def client(uri: str) -> Any:
    """An ``MlflowClient`` for tracking and registry at ``uri`` (the one API style for stage code)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client: Any, name: str, uri: str) -> str:
    """The experiment's id, created with artifacts beside a SQLite store (never the cwd-relative ./mlruns)."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(mlflow_client.create_experiment(name, artifact_location=artifact_location(uri, name)))


def open_registry(params: Params) -> tuple[Any, str]:
    """(client, uri) for ``mlflow.tracking_uri``; an unusable store fails here with the fix, before any work."""
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(params.mlflow.tracking_uri)
    try:
        c = client(uri)
        c.search_registered_models(max_results=1)  # touches the store: a bad URI or directory fails now
    except (MlflowException, OSError) as exc:  # OSError: a SQLite store whose directory cannot be created
        raise ConfigError(
            f"MLflow tracking at {uri!r} is unusable ({exc}). Fix mlflow.tracking_uri in params.yaml or "
            "MLFLOW_TRACKING_URI, or set both to null/unset for the embedded store (sqlite:///mlflow.db)."
        ) from exc
    return c, uri


def create_stage_run(mlflow_client: Any, params: Params, uri: str, stage: str) -> str:
    """A new run for ``stage`` in the params' experiment; returns its id."""
    run = mlflow_client.create_run(
        experiment_id(mlflow_client, params.mlflow.experiment, uri), run_name=stage, tags={"posescene.stage": stage}
    )
    return str(run.info.run_id)


def log_batch(
    mlflow_client: Any, run_id: str, metrics: Mapping[str, float], params: Mapping[str, str], step: int = 0
) -> None:
    """Metrics (at ``step``, timestamped now) and params of a run in one request."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    mlflow_client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
    )


def log_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: Sequence[str | Path] = (),
) -> str:
    """One finished run in ``experiment`` at ``uri`` (created with its artifacts beside a SQLite store): params as
    strings, metrics at step 0, then the files; for a stage that logs once, at its end (the world's bootstrap).
    Returns the run id."""
    from mlflow.entities import Metric, Param

    mlflow_client = client(uri)
    run_id = str(mlflow_client.create_run(experiment_id(mlflow_client, experiment, uri), run_name=run_name).info.run_id)
    now = int(time.time() * 1000)
    logged_params = [Param(k, str(v)) for k, v in params.items()]
    logged_metrics = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for start in range(0, len(logged_params), 100):  # a request takes at most 100 params and 1000 metrics
        mlflow_client.log_batch(run_id, params=logged_params[start : start + 100])
    for start in range(0, len(logged_metrics), 1000):
        mlflow_client.log_batch(run_id, metrics=logged_metrics[start : start + 1000])
    for path in artifacts:
        mlflow_client.log_artifact(run_id, str(path))
    mlflow_client.set_terminated(run_id)
    return run_id


def version_by_alias(mlflow_client: Any, name: str, alias: str) -> Any | None:
    """The registered model version of ``name`` aliased ``alias``, None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def download_model_version(name: str, version: str | int, uri: str) -> Path:
    """The artifacts of registered version ``version`` of ``name``, downloaded to a local cache directory."""
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", tracking_uri=uri))
