"""CLI sub-commands for the training area: ``posescene cache`` and ``posescene train``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from posescene.cli_app import app, fail
from posescene.errors import PosesceneError


@app.command()
def cache(
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set cache.batch_size=16."),
) -> None:
    """Encode every paired image (VAE latent) and caption (text state) once, into cache.out_dir."""
    from posescene.config import load_params, parse_set_option
    from posescene.data.cache import build_cache

    try:
        p = load_params(params, parse_set_option(set_))
        out = build_cache(
            p.pairs.out,
            p.ingest.out_dir,
            p.cache.out_dir,
            p.model.base,
            p.model.resolution,
            batch_size=p.cache.batch_size,
            threads=p.cache.threads,
            device=p.cache.device,
        )
        index = json.loads((out / "index.json").read_text())
    except PosesceneError as exc:
        fail(exc)
    typer.echo(f"cached {index['n_images']} image latents and {index['n_captions']} captions in {out}")


@app.command()
def train(
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set train.steps=50."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue from the last checkpoint of the same setup (default), or discard."
    ),
    resume_from: Path | None = typer.Option(
        None, help="Continue from this checkpoint dir (checkpoints/train/step_<n>), even with another train.lr."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Fine-tune the secondary adapter (docs/method.md steps 3-4); writes train.out_dir and registers `candidate`."""
    from posescene.config import load_params, parse_set_option
    from posescene.errors import ConfigError
    from posescene.training.train import train as run_train

    try:
        if resume_from is not None and not resume:
            raise ConfigError("--resume-from and --no-resume contradict each other; give one of them.")
        p = load_params(params, parse_set_option(set_))
        result = run_train(p, resume=resume, resume_from=resume_from, progress=progress)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(json.dumps(result.metrics, indent=1))
    typer.echo(f"secondary adapter: {result.adapter_dir}")
    if result.run_link:
        typer.echo(f"MLflow: {result.run_link}")
    if result.model_version:
        typer.echo(f"registered {p.mlflow.registered_model} version {result.model_version} as 'candidate'")
