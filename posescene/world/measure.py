"""The world's quality on held-out scenes: VAE reconstruction, the judges on real images, scene agreement and pose
fidelity of the base model and the primary adapter, and the pose's pull on the scene.

Images are drawn by the one sampler (:meth:`posescene.sampling.sampler.ModelBank.sample`, DDIM over an assembled
pipeline directory, as the evaluation draws them); ``tests/test_generate.py`` pins it to diffusers' stock pipelines.
The initial noise is the stock pipelines' as this world has always drawn it: rows ``i .. i + batch`` take theirs from
one generator seeded ``seed + i`` (:func:`draw`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from posescene.config import BootstrapParams, Params
from posescene.data.synth import SCENE_KINDS, without_scene
from posescene.errors import ConfigError
from posescene.evaluation.heldout import without_action
from posescene.evaluation.judges import (
    KeypointEstimator,
    SceneClassifier,
    predict_keypoints,
    predict_scene,
    scene_probabilities,
)
from posescene.evaluation.metrics import batch_pck as pck
from posescene.evaluation.pull import (
    caption_kind_probability,
    masked_sq_error,
    mean_with_interval,
    outside_people,
    ratio_with_interval,
    typical_chance,
    typical_of_pose,
)
from posescene.io import save_image_atomic
from posescene.sampling.sampler import ArmJob, ModelBank
from posescene.world.architectures import assemble_world_pipeline, copy_tree
from posescene.world.data import HELD_OUT_POLICY, WorldData, make_data, merge_ranges, overlaps
from posescene.world.parts import load_part, read_training_data
from posescene.world.train import vae_decode, vae_latents

# a second noise for the drift reference: far from every batch's seed + i
NEW_NOISE_OFFSET = 7_919
# the PCK thresholds the world reports: name -> (fraction, reference length)
PCK_REFS = {"0.1img": (0.1, "image"), "0.1bbox": (0.1, "bbox"), "0.2bbox": (0.2, "bbox")}


# ----------------------------------------------------------------------------------------------- drawing
def draw(
    bank: ModelBank, captions: Sequence[str], maps: np.ndarray | None, *, steps: int, guidance: float, seed: int,
    batch_size: int,
) -> np.ndarray:  # fmt: skip
    """uint8 (N, S, S, 3) images of ``captions``: the bank's primary adapter on ``maps`` (uint8 lattice maps), or
    the base model when ``maps`` is None.

    The rows go in batches of ``batch_size`` in order, and the batch starting at row ``i`` takes its initial noise
    from one generator seeded ``seed + i`` (what ``StableDiffusionPipeline(generator=...)`` draws for a batch). A
    job's seed is its row, so no two rows are one image even where captions repeat."""
    n = len(captions)
    blocks = [
        torch.randn((min(batch_size, n - i), *bank.latent_shape), generator=torch.Generator().manual_seed(seed + i))
        for i in range(0, n, batch_size)
    ]
    noise = torch.cat(blocks) if blocks else torch.empty(0)
    if maps is None:
        jobs = [ArmJob(caption, row, None, None, 0.0) for row, caption in enumerate(captions)]
    else:
        jobs = [ArmJob(caption, row, row, "primary", 1.0) for row, caption in enumerate(captions)]

    def as_input(rows: Sequence[Any]) -> torch.Tensor:
        assert maps is not None
        return torch.from_numpy(maps[list(rows)]).float()[:, None] / 255.0

    images = bank.sample(jobs, steps=steps, guidance_scale=guidance, batch_size=batch_size, maps=as_input,
                         sampler="ddim", bf16=False, noise=lambda row: noise[row : row + 1])  # fmt: skip
    assert images is not None  # one process
    return images


def save_grid(path: Path, images: np.ndarray, maps: np.ndarray | None) -> None:
    """A small contact sheet (maps row above images when given) for the README."""
    rows = [np.concatenate(list(images), axis=1)]
    if maps is not None:
        rows.insert(0, np.repeat(np.concatenate(list(maps), axis=1)[..., None], 3, axis=-1))
    save_image_atomic(path, Image.fromarray(np.concatenate(rows, axis=0)))


# ----------------------------------------------------------------------------------------------- measures
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR (dB) of uint8 images."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def keypoint_errors(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pixel distances of the visible target points (flat)."""
    visible = ~np.isnan(target).any(-1)
    return np.linalg.norm(pred - np.nan_to_num(target), axis=-1)[visible]


def other_pose(n_images: int, poses: int) -> np.ndarray:
    """For each image, the index of the *next pose of the same scene* (a different pose and position on the
    same background): the 'chance' reference of the normalised fidelity."""
    i = np.arange(n_images)
    return (i // poses) * poses + (i % poses + 1) % poses


def normalised_fidelity(score: float, chance: float, ceiling: float) -> float:
    """One pooled score as :func:`posescene.evaluation.metrics.normalised` puts it (0 = chance, 1 = the judge on
    real images), with the gap floored at 1e-9: on a tiny held-out set the ceiling can equal chance, and the
    world's metrics file keeps a number (0 when the score is at chance) where the evaluation's replicates say NaN."""
    return float((score - chance) / max(ceiling - chance, 1e-9))


def fidelity_norm_ci(
    xy: np.ndarray, real_xy: np.ndarray, own: np.ndarray, other: np.ndarray, scenes: np.ndarray, threshold: float,
    reference: str, side: int, seed: int, n_boot: int = 2000,
) -> list[float]:  # fmt: skip
    """95% percentile interval of the normalised fidelity, resampling held-out *scenes* with replacement (the
    poses of one scene share a background and a person, so the scene, not the image, is the unit). Score,
    chance and ceiling are recomputed on each resample."""
    rng = np.random.default_rng(seed)
    rows = [np.flatnonzero(scenes == s) for s in np.unique(scenes)]
    values = []
    for _ in range(n_boot):
        take = np.concatenate([rows[j] for j in rng.integers(0, len(rows), len(rows))])
        score = pck(xy[take], own[take], threshold, reference, side)
        chance = pck(xy[take], other[take], threshold, reference, side)
        values.append(normalised_fidelity(score, chance, pck(real_xy[take], own[take], threshold, reference, side)))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def measure(
    out_dir: Path, held: WorldData, vae: AutoencoderKL, classifier: SceneClassifier, estimator: KeypointEstimator,
    bp: BootstrapParams, seed: int, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """Held-out quality: VAE PSNR, judge accuracy, scene agreement and pose fidelity of base vs primary adapter
    (the world in ``out_dir``: its U-Net and primary adapter draw, through an assembled pipeline directory).

    Pose fidelity is PCK of the keypoint judge on generated images against the pose they were asked for; its
    *normalised* form puts 0 at chance (the same images scored against a different pose: the next pose of
    the same held-out scene) and 1 at the judge's score on the real held-out images.
    """
    res = held.images.shape[1]
    metrics: dict[str, Any] = {"heldout_images": len(held)}
    recon = vae_decode(vae, vae_latents(vae, held.images, desc="held-out latents"), desc="held-out decode")
    metrics["vae_psnr_db"] = psnr(held.images, recon)
    names = np.asarray(SCENE_KINDS)[held.kinds]
    metrics["judge_scene_acc_real"] = float(np.mean(np.asarray(predict_scene(classifier, held.images)) == names))
    metrics["judge_scene_acc_vae"] = float(np.mean(np.asarray(predict_scene(classifier, recon)) == names))
    real_xy, _ = predict_keypoints(estimator, held.images)
    metrics["judge_pck_real@0.1img"] = pck(real_xy, held.keypoints, 0.1, "image", res)
    metrics["judge_pck_real@0.1bbox"] = pck(real_xy, held.keypoints, 0.1, "bbox", res)
    metrics["judge_pck_real@0.2bbox"] = pck(real_xy, held.keypoints, 0.2, "bbox", res)
    metrics["judge_median_err_real_px"] = float(np.median(keypoint_errors(real_xy, held.keypoints)))
    xy, _ = predict_keypoints(estimator, recon)
    metrics["judge_pck_vae@0.1img"] = pck(xy, held.keypoints, 0.1, "image", res)
    metrics["judge_pck_vae@0.1bbox"] = pck(xy, held.keypoints, 0.1, "bbox", res)
    metrics["judge_median_err_vae_px"] = float(np.median(keypoint_errors(xy, held.keypoints)))
    n = min(bp.eval_samples, len(held))
    pick = np.random.default_rng(seed).choice(len(held), size=n, replace=False)
    own = held.keypoints[pick]
    other = held.keypoints[other_pose(len(held), bp.poses_per_scene)][pick]
    caps = [held.captions[i] for i in pick]
    ceiling = {k: pck(real_xy[pick], own, t, r, res) for k, (t, r) in PCK_REFS.items()}
    for k, v in ceiling.items():
        metrics[f"ceiling_pck@{k}"] = v
    with tempfile.TemporaryDirectory(prefix="world-eval-") as tmp:
        pipeline_dir = assemble_world_pipeline(out_dir, Path(tmp) / "pipeline")
        bank = ModelBank(str(pipeline_dir), {"primary": str(out_dir / "primary_adapter")}, resolution=res,
                         device=str(device))  # fmt: skip
        for g_i, guidance in enumerate(bp.eval_guidance):
            tag = "" if g_i == 0 else f"_cfg{guidance:g}"
            for name, maps in (("base", None), ("primary", held.maps[pick])):
                images = draw(bank, caps, maps, steps=bp.eval_steps, guidance=guidance, seed=seed,
                              batch_size=bp.eval_batch_size)  # fmt: skip
                scene = np.mean(np.asarray(predict_scene(classifier, images)) == names[pick])
                xy, _ = predict_keypoints(estimator, images)
                metrics[f"{name}_scene_acc{tag}"] = float(scene)
                for k, (t, r) in PCK_REFS.items():
                    score = pck(xy, own, t, r, res)
                    chance = pck(xy, other, t, r, res)
                    metrics[f"{name}_pck@{k}{tag}"] = score
                    metrics[f"{name}_chance_pck@{k}{tag}"] = chance
                    metrics[f"{name}_fidelity_norm@{k}{tag}"] = normalised_fidelity(score, chance, ceiling[k])
                    if g_i == 0:
                        metrics[f"{name}_fidelity_norm@{k}_ci95"] = fidelity_norm_ci(
                            xy, real_xy[pick], own, other, pick // bp.poses_per_scene, t, r, res, seed
                        )
                if g_i == 0:
                    save_grid(out_dir / f"samples_{name}.png", images[:16], None if maps is None else maps[:16])
        metrics.update(measure_pull(bank, held, classifier, bp, seed))
    metrics["eval_guidance"] = bp.eval_guidance[0]
    metrics["eval_steps"] = bp.eval_steps
    return metrics


def measure_pull(
    bank: ModelBank, held: WorldData, classifier: SceneClassifier, bp: BootstrapParams, seed: int
) -> dict[str, Any]:
    """The pose's pull on the scene (:mod:`posescene.evaluation.pull`) on held-out *atypical* images: their
    caption names a scene their pose is not typical of. Base model and primary adapter, same captions and noise.

    ``pull_*_scene_acc_atypical``: text-scene agreement; ``pull_prob_drop``: base minus primary, the judge's
    mean probability of the caption's kind; ``pull_*_typical_sceneless``: captions without the scene phrase,
    share of images judged as a kind typical of the pose (``pull_chance_typical``: a pose-blind model);
    ``pull_drift_ratio``: RMSE outside both people between the primary's images of two poses (same caption
    and noise) over the base model's RMSE between two noises there.
    """
    typical = typical_of_pose(held.kinds, held.actions)
    atypical = np.flatnonzero(~typical)
    n = min(bp.eval_samples, len(atypical))
    if n == 0:  # a tiny held-out set can hold no atypical pair: nothing to measure, said so
        return {"pull_images": 0}
    pick = np.sort(np.random.default_rng([seed, 23]).choice(atypical, size=n, replace=False))
    scenes = pick // bp.poses_per_scene
    other = other_pose(len(held), bp.poses_per_scene)[pick]
    # captions as the evaluation's prompts: no action phrase (in a coupled world its words name the scene too)
    caps = [without_action(held.captions[i], held.actions[i]) for i in pick]
    sceneless = [without_scene(c, SCENE_KINDS[held.kinds[i]]) for c, i in zip(caps, pick, strict=True)]
    actions = [held.actions[i] for i in pick]
    kinds = held.kinds[pick]

    def images(captions: Sequence[str], maps: np.ndarray | None, noise: int) -> np.ndarray:
        return draw(bank, captions, maps, steps=bp.eval_steps, guidance=bp.eval_guidance[0], seed=noise,
                    batch_size=bp.eval_batch_size)  # fmt: skip

    m: dict[str, Any] = {"pull_images": n}
    drawn = {"base": images(caps, None, seed), "primary": images(caps, held.maps[pick], seed)}
    caption_prob = {}
    for name, ims in drawn.items():
        probs = scene_probabilities(classifier, ims)
        agree = probs.argmax(-1) == kinds
        m[f"pull_{name}_scene_acc_atypical"], m[f"pull_{name}_scene_acc_atypical_ci95"] = mean_with_interval(
            agree, scenes, seed
        )
        caption_prob[name] = caption_kind_probability(probs, kinds)
        m[f"pull_{name}_caption_prob"] = float(caption_prob[name].mean())
    drop = caption_prob["base"] - caption_prob["primary"]
    m["pull_prob_drop"], m["pull_prob_drop_ci95"] = mean_with_interval(drop, scenes, seed)
    m["pull_chance_scene_acc"] = 1 / len(SCENE_KINDS)
    for name, maps in (("base", None), ("primary", held.maps[pick])):
        judged = scene_probabilities(classifier, images(sceneless, maps, seed)).argmax(-1)
        m[f"pull_{name}_typical_sceneless"], m[f"pull_{name}_typical_sceneless_ci95"] = mean_with_interval(
            typical_of_pose(judged, actions), scenes, seed
        )
    m["pull_chance_typical"] = typical_chance(actions)
    side = held.images.shape[1]
    mask = outside_people(held.keypoints[pick], held.keypoints[other], side)
    pose_sq, _ = masked_sq_error(drawn["primary"], images(caps, held.maps[other], seed), mask)
    noise_sq, _ = masked_sq_error(drawn["base"], images(caps, None, seed + NEW_NOISE_OFFSET), mask)
    ratio, ci = ratio_with_interval(pose_sq, noise_sq, scenes, seed)
    m["pull_drift_ratio"], m["pull_drift_ratio_ci95"] = float(np.sqrt(ratio)), [float(np.sqrt(v)) for v in ci]
    return m


def measure_world(
    world: Path, params: Params, first_scene: int, n_scenes: int, device: torch.device | None = None
) -> dict[str, Any]:
    """:func:`measure` a finished world on PoseScenes scenes ``[first_scene, first_scene + n_scenes)``.

    The bootstrap's own held-out scenes are what one picks a world by, so its metrics are optimistic for
    the world picked; scenes none of its parts ever trained on (``training_data.json``) give the unbiased
    number. Refuses scenes any part trained on. ``world`` is only read (sample sheets go to a temp copy).
    """
    bp, seed = params.bootstrap, params.seed
    device = device or torch.device("cpu")
    scenes = [[first_scene, first_scene + n_scenes]]
    seen = [r for rs in read_training_data(world)["parts"].values() for r in rs]
    if n_scenes <= 0 or overlaps(seen, scenes):
        raise ConfigError(
            f"{world}: scenes {scenes} are empty or overlap what it trained on ({merge_ranges(seen)}); pick others"
        )
    vae, classifier, estimator = (load_part(world, name, device) for name in
                                  ("vae", "scene_classifier", "keypoint_estimator"))  # fmt: skip
    res = int(vae.config.sample_size)
    held = make_data(first_scene, n_scenes, bp.poses_per_scene, res, seed, params.poses.beta, params.render.radius,
                     desc="fresh held-out", **HELD_OUT_POLICY)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="world-measure-") as tmp:
        scratch = Path(tmp) / "world"
        copy_tree(world, scratch)
        metrics = measure(scratch, held, vae, classifier, estimator, bp, seed, device)
    return {"scenes": scenes, **metrics}
