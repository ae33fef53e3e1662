"""CLI sub-commands for the evaluation area: ``posescene generate``, ``posescene evaluate``, ``posescene restat``."""

from __future__ import annotations

from pathlib import Path

import typer

from posescene.cli_app import app, fail
from posescene.errors import ConfigError, PosesceneError


def _weights(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--both-weights {text!r}: expected two numbers, e.g. 0.5,0.5") from None
    return a, b


@app.command()
def generate(
    out_dir: Path = typer.Argument(
        ..., help="Where to write <model>/<prompt>_<seed>_<pose>.png, grids and index.json."
    ),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Text prompt (the scene); repeatable."),
    pose_json: list[Path] | None = typer.Option(
        None, help="Keypoints JSON: {width, height, keypoints: 18 x [x, y] or null} (or a list of them); repeatable."
    ),
    pose_image: list[Path] | None = typer.Option(None, help="An image whose person gives the pose; repeatable."),
    lattices: Path | None = typer.Option(None, help="A lattices dataset dir (data/lattices) to take poses from."),
    image_id: list[str] | None = typer.Option(None, help="Image id of a lattice row in --lattices; repeatable."),
    seed: list[int] | None = typer.Option(None, help="Seed (-> the initial noise, shared by all poses); repeatable."),
    model: list[str] | None = typer.Option(
        None, help="base | primary | secondary | both, or a path to another adapter; repeatable (default primary)."
    ),
    secondary: Path | None = typer.Option(
        None, help="Secondary adapter dir (default: <train.out_dir>/secondary_adapter)."
    ),
    both_weights: str = typer.Option("0.5,0.5", help="MultiAdapter weights of primary,secondary for --model both."),
    identity: Path | None = typer.Option(None, help="Identity weights (LoRA / DreamBooth-style, local; needs peft)."),
    identity_scale: float = typer.Option(1.0, help="Strength of the identity weights."),
    detector: str | None = typer.Option(None, help="Pose detector for --pose-image (default: mediapipe)."),
    steps: int | None = typer.Option(None, min=1, help="DDIM steps (default: evaluate.steps)."),
    guidance: float | None = typer.Option(None, min=0.0, help="Guidance scale (default: evaluate.guidance_scale)."),
    batch_size: int | None = typer.Option(None, min=1, help="Images per batch (default: evaluate.batch_size)."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda (default: evaluate.device)."),
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml (base model, primary adapter, render params)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set model.base=/path/to/sd15."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Prompt(s) + pose(s) + seed(s) -> images with the base model, either adapter or both (any scene, any pose).

    Every pose and model of one (prompt, seed) starts from the same initial noise, so the images differ only
    by what the pose conditioning does; maps are rendered with the training renderer and render params.
    """
    from posescene.config import load_params, parse_set_option
    from posescene.serving.generate_images import GenerateRequest, PoseSources, generate_images

    try:
        request = GenerateRequest(
            out_dir=out_dir,
            prompts=prompt,
            seeds=seed or [0],
            models=model or ["primary"],
            poses=PoseSources(
                json_files=pose_json or [],
                images=pose_image or [],
                image_ids=image_id or [],
                lattices=lattices,
                detector=detector or "mediapipe",
            ),
            secondary=secondary,
            both_weights=_weights(both_weights),
            identity=identity,
            identity_scale=identity_scale,
            steps=steps,
            guidance=guidance,
            batch_size=batch_size,
            device=device,
        )
        result = generate_images(request, load_params(params, parse_set_option(set_)), progress=progress)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(result.summary())


@app.command()
def evaluate(
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set evaluate.n_prompts=4."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Drift vs fidelity frontier of every adapter, the matched-fidelity verdict, reports/, and the promotion gate."""
    from posescene.config import load_params, parse_set_option
    from posescene.evaluation.evaluate import evaluate as run_evaluate
    from posescene.evaluation.report import summary_markdown

    try:
        result = run_evaluate(load_params(params, parse_set_option(set_)), progress=progress)
    except PosesceneError as exc:
        fail(exc)
    if result is None:  # a rank other than 0 of a sharded evaluation: rank 0 measures and reports
        return
    typer.echo(summary_markdown(result.metrics))
    typer.echo(f"report: {result.out_dir / 'report.md'}; metrics: {result.out_dir / 'metrics.json'}")


@app.command()
def restat(
    run_dir: Path = typer.Argument(..., help="A finished evaluation's folder (drift.csv, fidelity.csv, metrics.json)."),
    seeds_per_prompt: int = typer.Option(..., min=1, help="Seeds per prompt in that run (its evaluate.seeds)."),
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml (bootstrap replicates and seed)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set seed=1."),
) -> None:
    """Re-decide a finished evaluation with the current statistics (prompt-clustered bootstrap, PCHIP), from its
    CSVs, without drawing an image; writes <run_dir>/restat.json."""
    from posescene.config import load_params, parse_set_option
    from posescene.evaluation.restat import restat as run_restat

    try:
        p = load_params(params, parse_set_option(set_))
        out = run_restat(run_dir, seeds_per_prompt=seeds_per_prompt, n_boot=p.evaluate.bootstrap_samples, seed=p.seed)
    except PosesceneError as exc:
        fail(exc)
    for name, c in out["comparisons"].items():
        typer.echo(f"{name}: Δdrift {c['delta_drift_matched']} ({c['verdict']}), rel. fidelity {c['rel_fidelity']}")
    typer.echo(f"written: {run_dir / 'restat.json'}")
