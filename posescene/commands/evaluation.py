"""CLI sub-commands for the evaluation area: ``posescene generate`` and ``posescene evaluate``."""

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
    try:
        result = _generate(
            out_dir,
            prompt,
            pose_json or [],
            pose_image or [],
            lattices,
            image_id or [],
            seed or [0],
            model or ["primary"],
            secondary,
            _weights(both_weights),
            identity,
            identity_scale,
            detector,
            steps,
            guidance,
            batch_size,
            device,
            params,
            set_,
            progress,
        )
    except PosesceneError as exc:
        fail(exc)
    typer.echo(result)


def _generate(
    out_dir: Path,
    prompts: list[str],
    pose_json: list[Path],
    pose_image: list[Path],
    lattices: Path | None,
    image_ids: list[str],
    seeds: list[int],
    models: list[str],
    secondary: Path | None,
    both_weights: tuple[float, float],
    identity: Path | None,
    identity_scale: float,
    detector: str | None,
    steps: int | None,
    guidance: float | None,
    batch_size: int | None,
    device: str | None,
    params_path: Path,
    set_: list[str] | None,
    progress: bool,
) -> str:
    from functools import partial

    import numpy as np
    import pyarrow.compute as pc
    from PIL import Image

    from posescene.config import load_params, parse_set_option
    from posescene.errors import InputDataError
    from posescene.evaluation.report import make_grid
    from posescene.generate import (
        STANDARD_MODELS,
        Job,
        ModelBank,
        ModelSpec,
        Pose,
        condition_maps,
        make_pose_detector,
        poses_from_images,
        poses_from_json,
        poses_from_lattice_rows,
        standard_spec,
    )
    from posescene.io import atomic_path, write_json_atomic

    p = load_params(params_path, parse_set_option(set_))
    beta = p.poses.beta
    poses: list[Pose] = []
    for path in pose_json:
        poses += poses_from_json(path, beta)
    if pose_image:
        det = make_pose_detector(detector or "mediapipe", p.poses.weights)
        arrays = []
        for path in pose_image:
            try:
                with Image.open(path) as im:
                    arrays.append(np.asarray(im.convert("RGB")))
            except OSError as exc:
                raise InputDataError(f"{path}: not a readable image ({exc})") from None
        try:
            poses += poses_from_images(arrays, det, beta, p.poses.min_score, [q.stem for q in pose_image])
        finally:
            close = getattr(det, "close", None)
            if close:
                close()
    if image_ids:
        from posescene.poses import read_lattices

        table = read_lattices(lattices or Path(p.poses.out_dir))
        for iid in image_ids:
            rows = table.filter(pc.equal(table.column("image_id"), iid)).to_pylist()
            rows = [r for r in rows if r.get("has_person")]
            if not rows:
                raise InputDataError(f"--image-id {iid}: no lattice row with a person")
            poses += poses_from_lattice_rows(rows[:1])

    specs: list[ModelSpec] = []
    adapters: dict[str, str] = {}
    for name in dict.fromkeys(models):
        if name in STANDARD_MODELS:
            spec = standard_spec(name, both_weights)
        elif Path(name).exists():
            spec = ModelSpec(Path(name).name, (name,), (1.0,))
            adapters[name] = name
        else:
            raise ConfigError(f"--model {name!r}: choose from {', '.join(STANDARD_MODELS)} or an adapter directory")
        specs.append(spec)
        for key in spec.adapters:
            if key == "primary":
                adapters[key] = p.model.primary_adapter
            elif key == "secondary":
                adapters[key] = str(secondary or Path(p.train.out_dir) / "secondary_adapter")
    if any(s.uses_pose for s in specs) and not poses:
        raise ConfigError("adapter models need a pose: pass --pose-json, --pose-image or --image-id")

    bank = ModelBank(
        p.model.base,
        adapters,
        resolution=p.model.resolution,
        in_channels=p.model.adapter_in_channels,
        device=device or p.evaluate.device,
        identity=str(identity) if identity else None,
        identity_scale=identity_scale,
    )
    maps = partial(
        condition_maps,
        resolution=p.model.resolution,
        radius=p.render.radius,
        limbs=p.render.limbs,
        in_channels=p.model.adapter_in_channels,
        invert=p.model.adapter_invert,
    )
    pose_list: list[Pose | None] = list(poses) or [None]
    jobs = [Job(text, s, pose) for text in prompts for s in seeds for pose in pose_list]
    records = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        outputs = {}
        for spec in specs:
            images = bank.generate(
                spec,
                jobs,
                steps=steps or p.evaluate.steps,
                guidance_scale=p.evaluate.guidance_scale if guidance is None else guidance,
                batch_size=batch_size or p.evaluate.batch_size,
                maps=maps,
                progress=progress,
            )
            outputs[spec.name] = images
            (tmp / spec.name).mkdir()
            for n, (job, image) in enumerate(zip(jobs, images, strict=True)):
                k, rest = divmod(n, len(seeds) * len(pose_list))
                j = rest % len(pose_list)
                name = f"{spec.name}/p{k}_s{job.seed}_pose{j}.png"
                Image.fromarray(image).save(tmp / name)
                records.append(
                    {"file": name, "model": spec.name, "prompt": job.prompt, "seed": job.seed, "pose": j,
                     "pose_label": job.pose.label if job.pose else None}
                )  # fmt: skip
        per = len(pose_list)
        for k, text in enumerate(prompts):
            for si, s in enumerate(seeds):
                start = (k * len(seeds) + si) * per
                rows = [(name, list(images[start : start + per])) for name, images in outputs.items()]
                labels = [q.label if q else "-" for q in pose_list]
                make_grid(rows, labels, title=f"{text} (seed {s})").save(tmp / f"grid_p{k}_s{s}.png")
        write_json_atomic(tmp / "index.json", records)
    return f"wrote {len(records)} images ({len(specs)} model(s) x {len(jobs)} jobs) to {out_dir}"


@app.command()
def evaluate(
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set evaluate.n_prompts=4."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Drift vs fidelity frontier of every adapter, the matched-fidelity verdict, reports/, and the promotion gate."""
    from posescene.config import load_params, parse_set_option
    from posescene.evaluate import evaluate as run_evaluate
    from posescene.evaluation.report import summary_markdown

    try:
        result = run_evaluate(load_params(params, parse_set_option(set_)), progress=progress)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(summary_markdown(result.metrics))
    typer.echo(f"report: {result.out_dir / 'report.md'}; metrics: {result.out_dir / 'metrics.json'}")
