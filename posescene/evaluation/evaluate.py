"""Stage ``evaluate``: does the secondary adapter keep the scene better than turning the primary down?

The stage loads everything once, generates every image in batches, measures, and hands the numbers to the
modules that decide and report (docs/method.md, "The evaluation"):

- :mod:`posescene.evaluation.heldout` — sets (prompt x noise) and poses, checked disjoint from training;
- :mod:`posescene.evaluation.judges` — the pose and scene judges;
- :mod:`posescene.evaluation.metrics` — drift over scene pixels, OKS, keypoint AP, PCK, keypoint error;
- :mod:`posescene.evaluation.frontier` — the drift-vs-fidelity curves, matched-fidelity deltas, bootstrap CIs;
- :mod:`posescene.evaluation.promotion` — the gate on CI bounds, then the registry;
- :mod:`posescene.evaluation.report` — metrics.json, plots, grids, report.md;
- :mod:`posescene.tracking` — the MLflow run.

Arms: the base model (scale 0) and every adapter (primary, secondary, ablations) at every scale of
``evaluate.scales``; the registry's champion at scale 1 when it is not the candidate. Every arm of a set starts
from the set's noise and sees the same poses, so every comparison is paired.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from posescene import tracking
from posescene.config import NEW_NOISE_SEED, Params
from posescene.errors import ConfigError, InputDataError, ModelLoadError
from posescene.evaluation import frontier as fr
from posescene.evaluation import heldout as ho
from posescene.evaluation import metrics
from posescene.evaluation import promotion as gate
from posescene.evaluation.judges import ClipScorer, PoseJudge, SceneJudge, is_builtin_world, load_lpips, make_judges
from posescene.evaluation.pull import atypical_cells, pose_typical_cells
from posescene.evaluation.report import run_json, write_outputs
from posescene.evaluation.result import EvaluationResult
from posescene.sampling.maps import condition_maps
from posescene.sampling.sampler import ArmJob, Injection, ModelBank
from posescene.shards import BatchStore, Shard

log = logging.getLogger(__name__)

# distance of an image to the base image of its noise, by Chebyshev distance (px at the model resolution) from
# its own pose's person box: a person's spill-over fades with distance, a change of scene does not
RINGS = (("box", -1, 0), ("near", 0, 8), ("mid", 8, 16), ("far", 16, 10**6))
TRAINED = ("secondary", "both")  # families compared with the alternatives like a candidate (+ ablations)


def arm_plan(params: Params, dirs: Mapping[str, str]) -> list[tuple[str, float]]:
    """Every arm as (family, knob): the base model, each adapter over its scales, the training-free alternatives
    (mask, steps), the trained ``both``, the inpainting bound, the placebo, the champion."""
    ev, alt = params.evaluate, params.evaluate.alternatives
    ablations = {run.name for run in ev.ablations}
    arms: list[tuple[str, float]] = [("base", 0.0)]
    for key in dirs:
        if key == "champion":
            continue
        grid = ev.ablation_scales if key in ablations else ev.secondary_scales if key == "secondary" else ev.scales
        arms += [(key, float(s)) for s in grid if s > 0]
    if "primary" in dirs:
        arms += [("mask", m) for m in alt.mask_margins] + [("masked", s) for s in alt.masked_scales]
        arms += [("steps", f) for f in alt.steps_fractions]
        if "secondary" in dirs:
            arms += [("both", w) for w in alt.both_weights]
        if alt.inpaint_margin is not None:
            arms.append(("inpaint", alt.inpaint_margin))
        if alt.placebo_scale is not None:
            arms.append(("placebo", alt.placebo_scale))
    if "champion" in dirs:
        arms.append(("champion", 1.0))
    return arms


def arm_job(
    prompt: str,
    seed: int,
    pose: Any,
    family: str,
    knob: float,
    *,
    corrections: frozenset[str] = frozenset(),
    masked_margin: float = 0.0,
) -> ArmJob:
    """The sampler's job for one arm (docs/method.md, "The alternatives"). ``corrections``: the trained families
    whose adapter is a correction added to the primary (:func:`correction_families`), so the arm draws the model
    as trained: P-Ad at 1 plus the adapter at the knob. ``masked_margin``: the region margin of the ``masked``
    family (the primary masked at the smallest margin, at the knob's scale)."""
    if family in corrections:
        return ArmJob(prompt, seed, pose, family, knob, added=(("primary", 1.0),))
    if family == "base":
        return ArmJob(prompt, seed, pose, None, 0.0)
    if family == "placebo":
        return ArmJob(prompt, seed, pose, "primary", knob)
    if family in ("mask", "steps", "inpaint"):
        return ArmJob(prompt, seed, pose, "primary", 1.0, Injection(family, knob))
    if family == "masked":
        return ArmJob(prompt, seed, pose, "primary", knob, Injection("mask", masked_margin))
    if family == "both":
        return ArmJob(prompt, seed, pose, "primary", 1.0, added=(("secondary", knob),))
    return ArmJob(prompt, seed, pose, family, knob)


def correction_families(params: Params, champion_is_correction: bool = False) -> frozenset[str]:
    """The trained families whose adapter is a correction added to the primary, drawn as P-Ad at 1 plus the
    adapter: the secondary under ``train.secondary_role: correct``, each ablation run of role ``correct``, and the
    champion when its pyfunc says so."""
    return frozenset(
        [*(["secondary"] if params.train.secondary_role == "correct" else []),
         *(run.name for run in params.evaluate.ablations if run.role == "correct"),
         *(["champion"] if champion_is_correction else [])]
    )  # fmt: skip


def comparisons_of(arms: Sequence[tuple[str, float]], ablations: Sequence[str]) -> list[tuple[str, str]]:
    """(candidate, reference) pairs: every trained arm and the placebo against the primary's scale curve and
    the training-free alternatives' envelope; the secondary against a valid champion."""
    families = list(dict.fromkeys(a for a, _ in arms))
    out = []
    for fam in families:
        if fam in TRAINED or fam in ablations or fam in ("placebo", "champion"):
            out.append((fam, "primary"))
            if fam != "champion":
                out.append((fam, fr.ENVELOPE))
    if "champion" in families:
        out.append(("secondary", "champion"))
    return out


def load_heldout(params: Params) -> ho.HeldOut:
    """Read pairs, manifest and lattices from the paths in ``params`` and select the held-out sets and poses."""
    from posescene.data.ingest import read_manifest
    from posescene.data.pairs import read_pairs
    from posescene.data.poses import read_lattices

    lattice_dir = Path(params.poses.out_dir)
    if not lattice_dir.exists():
        raise InputDataError(f"{lattice_dir}: no lattices. Run `posescene poses` (or `python -m flows.poses`) first.")
    lattices = read_lattices(lattice_dir)
    meta = lattices.schema.metadata or {}
    beta = float(meta[b"posescene.beta"]) if b"posescene.beta" in meta else params.poses.beta
    ev = params.evaluate
    return ho.select_heldout(
        read_pairs(params.pairs.out),
        read_manifest(params.ingest.out_dir),
        lattices,
        n_prompts=ev.n_prompts,
        seeds=ev.seeds,
        n_poses=ev.n_poses,
        seed=params.seed,
        beta=beta,
        image_root=Path(params.ingest.out_dir),
    )


def adapter_dirs(params: Params) -> dict[str, str]:
    """The adapters to sweep (key -> directory), checked to exist before anything is loaded."""
    ev = params.evaluate
    secondary = str(Path(params.train.out_dir) / "secondary_adapter")
    dirs = {key: params.model.primary_adapter if key == "primary" else secondary for key in ev.adapters}
    for run in ev.ablations:
        if run.name in dirs or run.name in ("base", "champion"):
            raise ConfigError(f"evaluate.ablations: name {run.name!r} is taken; choose another name")
        dirs[run.name] = run.adapter
    for key, path in dirs.items():
        if key != "primary" and not Path(path).exists():
            what = "the secondary adapter" if key == "secondary" else f"ablation adapter {key!r}"
            raise ModelLoadError(f"{path}: {what} does not exist. Train it first (`python -m flows.train`).")
    return dirs


def champion_adapter_dir(name: str, champion: Any, candidate: Any, uri: str) -> tuple[Path, bool] | None:
    """The champion's adapter from the registry (downloaded to a local cache), when it is not the candidate, and
    whether it was trained as a correction added to the primary (its pyfunc's ``secondary_role``)."""
    if champion is None or (candidate is not None and str(champion.version) == str(candidate.version)):
        return None
    local = tracking.download_model_version(name, champion.version, uri)
    pyfunc_flavor: dict[str, Any] = {}
    if (local / "MLmodel").is_file():
        from mlflow.models import Model

        pyfunc_flavor = Model.load(local).flavors.get("python_function", {})
    correction = (pyfunc_flavor.get("config") or {}).get("secondary_role") == "correct"  # the pyfunc's model_config
    adapter = (pyfunc_flavor.get("artifacts") or {}).get("adapter", {}).get("path")
    configs = (
        [local / adapter]
        if adapter and (local / adapter / "config.json").is_file()
        else sorted(
            p.parent for p in local.rglob("config.json") if (p.parent / "diffusion_pytorch_model.safetensors").exists()
        )
    )
    if not configs:
        raise ModelLoadError(
            f"champion v{champion.version} of {name!r}: no adapter (config.json + safetensors) in {local}"
        )
    return configs[0], correction


def _persons_at(persons: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    arr = np.empty(len(persons), dtype=object)
    arr[:] = persons
    return arr.reshape(shape)


def load_real_images(paths: Sequence[Path], resolution: int) -> np.ndarray:
    """The real images the held-out poses come from, resized whole to the model resolution (as training does)."""
    from PIL import Image

    out = []
    for path in paths:
        if not path.is_file():
            raise InputDataError(f"{path}: the image of a held-out pose is missing. Rerun the ingest stage.")
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)))
    return np.stack(out)


def scene_mask(targets: Sequence[np.ndarray], resolution: int, margin: float, notices: list[str]) -> np.ndarray:
    scene = ~metrics.person_mask(targets, (resolution, resolution), margin)
    if not scene.any():
        raise ConfigError(
            f"the union of the {len(targets)} held-out person regions covers the whole image, so there is no scene "
            "left to measure drift on; lower evaluate.n_poses or evaluate.mask_margin"
        )
    if scene.mean() < 0.2:
        notices.append(
            f"the scene outside the union of the person regions is only {scene.mean():.0%} of the image; drift is "
            "measured on few pixels (lower evaluate.n_poses or evaluate.mask_margin)"
        )
    return scene


def text_scene_reference(
    judge: SceneJudge, scenes: np.ndarray, heldout: ho.HeldOut, resolution: int
) -> dict[str, np.ndarray]:
    """Per set, the chance and ceiling of text-scene agreement (the judge reads the kind the caption names).

    Chance: the judge's kind for the set's base image matched against the captions of the *other* prompts' sets
    (an image of another text). Ceiling: the judge on the real image each prompt's caption was written for.
    """
    kinds = np.array([ps.prompt.scene_kind for ps in heldout.sets], dtype=object)
    prompt_of = np.array([ps.prompt.prompt_id for ps in heldout.sets])
    base_kind = scenes[:, 0, 0]
    chance = np.array([
        np.mean([base_kind[s] == kinds[t] for t in range(len(kinds)) if prompt_of[t] != prompt_of[s]] or [np.nan])
        for s in range(len(kinds))
    ])  # fmt: skip
    real = judge.predict(load_real_images(heldout.prompt_image_paths, resolution)) if heldout.prompt_image_paths else []
    by_prompt = {p.prompt_id: float(k == p.scene_kind) for p, k in zip(heldout.prompts, real, strict=True)}
    ceiling = np.array([by_prompt.get(int(p), np.nan) for p in prompt_of])
    return {"chance": chance, "ceiling": ceiling}


def ring_masks(targets: Sequence[np.ndarray], resolution: int, margin: float) -> list[dict[str, np.ndarray]]:
    """Per pose, the pixels of each ring of :data:`RINGS` around its own person box (grown by ``margin``)."""
    from scipy.ndimage import distance_transform_cdt

    out = []
    for target in targets:
        box = metrics.person_mask([target], (resolution, resolution), margin)
        dist = distance_transform_cdt(~box, metric="chessboard") if box.any() else np.full(box.shape, 10**6)
        dist = np.where(box, -1, dist)
        out.append({f"to_base_{name}": (dist > lo) & (dist <= hi) if name != "box" else box for name, lo, hi in RINGS})
    return out


def _trained_run_id(train_dir: str | Path) -> str | None:
    """The MLflow run id the training stage recorded in ``build/train/run.json`` (or metrics.json), if any."""
    for name in ("run.json", "metrics.json"):
        try:
            data = json.loads((Path(train_dir) / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            for key in ("mlflow_run_id", "run_id"):
                if isinstance(data.get(key), str):
                    return data[key]
    return None


def evaluate(
    params: Params,
    *,
    pose_judge: PoseJudge | None | str = "params",
    scene_judge: SceneJudge | None | str = "params",
    progress: bool = True,
) -> EvaluationResult | None:
    """Run the whole stage: generate every arm, measure, gate, write ``evaluate.out_dir``, log to MLflow.

    ``pose_judge`` / ``scene_judge``: ``"params"`` builds them from params (the normal case); tests may pass
    their own objects. Everything that can fail for a bad configuration or a missing input is checked before
    the first image is generated.

    Launched as several processes (``accelerate launch`` / ``torchrun``: :class:`posescene.shards.Shard`), every
    rank draws its share of the batches into ``evaluate.store``; rank 0 then measures, decides, writes and returns
    the result, the other ranks return None. The images are the bytes one process draws.
    """
    start = time.perf_counter()
    ev = params.evaluate
    shard = Shard.from_env()
    if shard.world > 1 and ev.store is None:
        raise ConfigError("evaluate.store is null: the processes of a sharded evaluation share their images there")
    notices: list[str] = []
    dirs = adapter_dirs(params)
    heldout = load_heldout(params)
    checked = 0
    training = ho.load_training_ranges(params.world.shipped_dir) if is_builtin_world(params) else None
    if training is not None:
        checked = ho.check_disjoint(heldout.scenes, training, f"evaluate ({params.ingest.out_dir})")
    elif is_builtin_world(params):
        notices.append(f"{params.world.shipped_dir}/{ho.TRAINING_DATA_FILE} is missing: leakage not checked")
    res = params.model.resolution

    with shard.main_first():  # the champion (an arm) is looked up and downloaded by every rank, rank 0 first
        client, uri = tracking.open_registry(params)
        name = params.mlflow.registered_model
        candidate, champion = gate.registry_candidate(client, name)
        champion_found = champion_adapter_dir(name, champion, candidate, uri) if ev.compare_champion else None
    champion_is_correction = False
    if champion_found is not None:
        dirs["champion"], champion_is_correction = str(champion_found[0]), champion_found[1]
    bank = ModelBank(
        params.model.base, dirs, resolution=res, in_channels=params.model.adapter_in_channels,
        device=shard.device(ev.device),
    )  # fmt: skip
    pose: PoseJudge | None = None if pose_judge == "params" else pose_judge  # type: ignore[assignment]
    scene_j: SceneJudge | None = None if scene_judge == "params" else scene_judge  # type: ignore[assignment]
    clip, perceptual = None, None
    if shard.is_main:  # only rank 0 measures
        if pose_judge == "params" or scene_judge == "params":
            made_pose, made_scene = make_judges(params, bank.device, notices)
            pose = made_pose if pose_judge == "params" else pose
            scene_j = made_scene if scene_judge == "params" else scene_j
        clip = ClipScorer(ev.clip_model, bank.device) if ev.clip_model else None
        perceptual = load_lpips(ev.lpips_weights, bank.device) if ev.lpips_weights else None
    if pose is None and (shard.is_main or ev.pose_judge == "none"):
        raise ConfigError("evaluate.pose_judge is none: the frontier needs a pose judge (fidelity)")

    # everything is loaded and checked: only now a run is opened (a mistake above leaves no run behind)
    run_id = tracking.create_stage_run(client, params, uri, "evaluate") if shard.is_main else ""
    try:
        arms = arm_plan(params, dirs)
        corrections = correction_families(params, champion_is_correction)
        targets = [p.keypoints_at(res, heldout.beta) for p in heldout.poses]
        scene = scene_mask(targets, res, ev.mask_margin, notices)
        masked = ev.alternatives.masked_margin
        jobs = [
            arm_job(s.prompt.caption, s.noise_seed, pose_, a, knob, corrections=corrections, masked_margin=masked)
            for s in heldout.sets
            for pose_ in heldout.poses
            for a, knob in arms
        ]
        # each prompt's base image from another noise: the drift of "a new scene", the unit of every drift
        other = [
            ArmJob(p.caption, ho.noise_seed(NEW_NOISE_SEED, p.prompt_id), None, None, 0.0) for p in heldout.prompts
        ]
        maps = partial(condition_maps, resolution=res, radius=params.render.radius, limbs=params.render.limbs,
                       in_channels=params.model.adapter_in_channels, invert=params.model.adapter_invert)  # fmt: skip

        def region(pose_: Any, margin: float) -> np.ndarray:
            return metrics.person_mask([pose_.keypoints_at(res, heldout.beta)], (res, res), margin)

        t0 = time.perf_counter()
        drawn = bank.sample([*jobs, *other], steps=ev.steps, guidance_scale=ev.guidance_scale,
                            batch_size=ev.batch_size, maps=maps, sampler=ev.sampler, bf16=ev.bf16, region=region,
                            progress=progress, store=BatchStore(ev.store) if ev.store else None,
                            shard=shard)  # fmt: skip
        generation_s = time.perf_counter() - t0
        if drawn is None:  # another rank than 0: its batches are in the store, rank 0 measures
            log.info("evaluate %s: this rank's batches are drawn (%.1f s)", shard.label, generation_s)
            return None
        assert pose is not None
        flat, new_noise_images = drawn[: len(jobs)], drawn[len(jobs) :]
        n_sets, n_poses, n_arms = len(heldout.sets), len(heldout.poses), len(arms)
        images = flat.reshape(n_sets, n_poses, n_arms, *flat.shape[1:])
        log.info("evaluate: %d images in %.1f s", len(drawn), generation_s)

        persons = _persons_at(pose.predict(flat), (n_sets, n_poses, n_arms))
        scenes = np.asarray(scene_j.predict(flat), dtype=object).reshape(n_sets, n_poses, n_arms) if scene_j else None
        atypical = atypical_cells(
            [ps.prompt.scene_kind for ps in heldout.sets], [q.meta.get("action") for q in heldout.poses]
        )
        clip_scores = None
        if clip is not None:
            captions = [j.prompt for j in jobs]
            clip_scores = clip.score(flat, captions, ev.batch_size).reshape(n_sets, n_poses, n_arms)
        keys = [fr.arm_key(a, s) for a, s in arms]
        own_scene = [~metrics.person_mask([t], (res, res), ev.mask_margin) for t in targets]
        rings = ring_masks(targets, res, ev.mask_margin)
        prompt_row = {p.prompt_id: k for k, p in enumerate(heldout.prompts)}
        new_noise = np.array([
            metrics.masked_rmse(images[s, 0, 0], new_noise_images[prompt_row[ps.prompt.prompt_id]], scene)
            for s, ps in enumerate(heldout.sets)
        ])  # fmt: skip
        drift, drift_ssim, fidelity, ap_arms, extra = {}, {}, {}, {}, {}
        drift_rows, fidelity_rows = [], []
        for a, key in enumerate(keys):
            d = np.full((n_sets, n_poses, n_poses), np.nan)
            d_ssim, d_pair = np.full_like(d, np.nan), np.full_like(d, np.nan)
            to_base = {n: np.full((n_sets, n_poses), np.nan) for n in ["to_base", *(f"to_base_{r[0]}" for r in RINGS)]}
            for s, pose_set in enumerate(heldout.sets):
                for pair in metrics.pairwise_drift(list(images[s, :, a]), scene, perceptual):
                    d[s, pair.i, pair.j] = d[s, pair.j, pair.i] = pair.rmse
                    d_ssim[s, pair.i, pair.j] = d_ssim[s, pair.j, pair.i] = pair.one_minus_ssim
                    own = own_scene[pair.i] & own_scene[pair.j]
                    pair_rmse = metrics.masked_rmse(images[s, pair.i, a], images[s, pair.j, a], own)
                    d_pair[s, pair.i, pair.j] = d_pair[s, pair.j, pair.i] = pair_rmse
                    row = {"arm": key, "set": pose_set.set_id, "pose_i": pair.i, "pose_j": pair.j, "rmse": pair.rmse,
                           "one_minus_ssim": pair.one_minus_ssim, "rmse_pair_mask": pair_rmse}  # fmt: skip
                    if pair.perceptual is not None:
                        row["lpips"] = pair.perceptual
                    drift_rows.append(row)
                for p in range(n_poses):
                    to_base["to_base"][s, p] = metrics.masked_rmse(images[s, p, a], images[s, p, 0], scene)
                    for ring, mask in rings[p].items():
                        to_base[ring][s, p] = metrics.masked_rmse(images[s, p, a], images[s, p, 0], mask)
            # the headline drift (evaluate.promotion.metric) drives the frontier; the 1-SSIM column stays 1-SSIM
            drift[key] = fr.headline_drift(ev.promotion.metric, d, d_ssim)
            drift_ssim[key] = d_ssim
            extra[key] = {"drift_pair_mask": d_pair, **to_base}
            if scenes is not None:
                kinds = np.array([ps.prompt.scene_kind for ps in heldout.sets], dtype=object)
                agreement = (scenes[:, :, a] == kinds[:, None]).astype(np.float64)
                extra[key]["scene_agreement"] = agreement
                if atypical is not None:  # the pairs where a pose that pulls the scene would show it
                    extra[key]["scene_agreement_atypical"] = np.where(atypical, agreement, np.nan)
                    extra[key]["scene_agreement_typical"] = np.where(~atypical, agreement, np.nan)
                    # the pull itself: the judge reads a kind the pose is typical of instead of the caption's
                    pulled = pose_typical_cells(scenes[:, :, a], [q.meta["action"] for q in heldout.poses])
                    extra[key]["scene_pulled_atypical"] = np.where(atypical, pulled, np.nan).astype(np.float64)
            values, oks, score = metrics.measure_fidelity(persons[:, :, a], targets, ev.min_score)
            fidelity[key], ap_arms[key] = values, (oks, score)
            for s, pose_set in enumerate(heldout.sets):
                for p in range(n_poses):
                    row = {"arm": key, "set": pose_set.set_id, "pose": p, "action": heldout.poses[p].meta.get("action"),
                           **{m: float(values[m][s, p]) for m in metrics.MEASURES}}  # fmt: skip
                    if scenes is not None:
                        row["scene_expected"] = pose_set.prompt.scene_kind
                        row["scene_predicted"] = scenes[s, p, a]
                    if clip_scores is not None:
                        row["clip_score"] = float(clip_scores[s, p, a])
                    fidelity_rows.append(row)

        reference = keys.index(fr.arm_key("primary", 1.0)) if "primary" in dirs else len(keys) - 1
        chance, chance_oks, chance_score = metrics.measure_chance(persons[:, :, reference], targets, ev.min_score)
        real = load_real_images(heldout.pose_image_paths, res)
        real_persons = _persons_at(pose.predict(real), (1, n_poses))
        real_values, real_oks, real_score = metrics.measure_fidelity(real_persons, targets, ev.min_score)
        scene_reference = None
        if scene_j is not None:
            scene_reference = text_scene_reference(scene_j, scenes, heldout, res)
        frontier = fr.summarise(
            drift=drift,
            drift_ssim=drift_ssim,
            fidelity=fidelity,
            mismatched=chance,
            real={m: v[0] for m, v in real_values.items()},
            arms=arms,
            measure=ev.fidelity,
            compare=comparisons_of(arms, [run.name for run in ev.ablations]),
            n_boot=ev.bootstrap_samples,
            seed=params.seed,
            ap={"arms": ap_arms, "chance": (chance_oks, chance_score), "real": (real_oks[0], real_score[0])},
            prompts=[s.prompt.prompt_id for s in heldout.sets],
            new_noise=new_noise,
            extra=extra,
            scene=scene_reference,
        )
        rules = gate.GateRules(
            ev.promotion.fidelity_floor, ev.promotion.drift_margin, ev.promotion.min_primary_fidelity
        )
        decision = gate.decide(frontier, rules)
        verdict = gate.verdict(frontier, decision)
        for notice in notices:
            log.warning("evaluate: %s", notice)
        tags = registry_tags(frontier, decision, verdict, run_id)
        promotion = gate.apply(
            client, name, decision, candidate=candidate, champion=champion,
            trained_run_id=_trained_run_id(params.train.out_dir), tags=tags,
            description=version_description(params, frontier, verdict, run_id, uri),
        )  # fmt: skip
        result = EvaluationResult(
            heldout, arms, images, frontier, decision, verdict, promotion, drift_rows, fidelity_rows, notices,
            Path(ev.out_dir), run_id, uri, time.perf_counter() - start, generation_s, float(scene.mean()), checked,
        )  # fmt: skip
        metrics_dict = result.metrics = write_outputs(result, params)
        finish_run(client, run_id, result, metrics_dict, params)
    except BaseException:
        if run_id:
            client.set_terminated(run_id, status="FAILED")
        raise
    return result


def registry_tags(frontier: fr.Frontier, decision: gate.Decision, verdict: str, run_id: str) -> dict[str, str]:
    """Version tags: the verdict, every gate check with its bound, and the evaluation run."""
    tags = {"verdict": verdict[:4000], "run_id": run_id, "fidelity_measure": frontier.measure}
    for check in decision.checks:
        slug = check.name.replace(" ", "_")
        tags[f"gate.{slug}"] = (
            f"{'pass' if check.passed else 'fail'} (bound {check.bound:.4g}, limit {check.limit:.4g})"
        )
    comp = frontier.comparisons.get("secondary")
    if comp is not None and comp.delta_drift is not None:
        d = comp.delta_drift
        tags["delta_drift_matched"] = f"{d.value:.4g} [{d.low:.4g}, {d.high:.4g}]"
    return tags


def version_description(params: Params, frontier: fr.Frontier, verdict: str, run_id: str, uri: str) -> str:
    """What a registered version needs to explain itself: what it was trained against, how to load it, the verdict."""
    tp = params.train
    return "\n".join([
        "Secondary pose adapter (posescene): keeps the scene stable when only the pose changes.",
        f"Base model: {params.model.base}; primary adapter: {params.model.primary_adapter} "
        f"(resolution {params.model.resolution}, adapter_in_channels {params.model.adapter_in_channels}).",
        f"Trained: balance {tp.balance}, {tp.steps} steps x batch {tp.batch_size}, lr {tp.lr:g}, seed {params.seed}.",
        f"Evaluation verdict: {verdict}",
        f"Evaluation run: {run_id} at {uri} (report.md, metrics.json, plots/frontier.png among its artifacts).",
        "Load: mlflow.pyfunc.load_model('models:/" + params.mlflow.registered_model + "@champion') (prompt + "
        "keypoints -> PNG), or the adapter directory under the version's artifacts with "
        "diffusers.T2IAdapter.from_pretrained in a stock StableDiffusionAdapterPipeline.",
    ])  # fmt: skip


def finish_run(
    client: Any, run_id: str, result: EvaluationResult, metrics_dict: dict[str, Any], params: Params
) -> None:
    """Log the metrics (flat keys), the params of the stage and the report files to the evaluation's MLflow run."""
    logged = {**metrics_dict, "run": {**metrics_dict.get("run", {}), **run_json(result)}}
    flat = {k: float(v) for k, v in tracking.flatten(logged).items() if _is_number(v) and math.isfinite(float(v))}
    params_flat = {
        k: v for k, v in tracking.flatten(params.model_dump(mode="json")).items()
        if k.split(".", 1)[0] in ("evaluate", "model", "render")
    }  # fmt: skip
    tracking.log_batch(
        client,
        run_id,
        metrics={k.replace("@", "_at_"): v for k, v in flat.items()},
        params={k.replace("@", "_at_"): str(v)[:6000] for k, v in params_flat.items()},
    )
    client.set_tag(run_id, "posescene.promotion", result.promotion.status)
    client.set_tag(run_id, "posescene.verdict", result.verdict[:4000])
    for name in ("metrics.json", "run.json", "report.md", "drift.csv", "fidelity.csv"):
        client.log_artifact(run_id, str(result.out_dir / name))
    for sub in ("plots", "grids"):
        client.log_artifacts(run_id, str(result.out_dir / sub), artifact_path=sub)
    client.set_terminated(run_id, status="FINISHED")


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


__all__ = ["EvaluationResult", "adapter_dirs", "evaluate", "load_heldout"]
