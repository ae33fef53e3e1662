"""The ``bootstrap`` stage: train (or load) every part of the built-in world, ship it, measure it, record what it saw.

Order: data (in memory) -> VAE (+ decoder fine-tune) -> judges -> frozen text states -> U-Net -> adapter -> joint
fine-tune -> ship (fp16 safetensors, diffusers layout) -> measure on held-out scenes -> README, MLflow. Every stage
checkpoints (:mod:`posescene.world.loop`), so a resumed run continues exactly where a killed one stopped; the order
of the steps below is also the order of the global random draws (model initialisation), so it is part of what a
run reproduces.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, T2IAdapter, UNet2DConditionModel

from posescene.config import BootstrapParams, Params
from posescene.devices import cpu_threads, resolve_device
from posescene.errors import ConfigError, ModelLoadError
from posescene.evaluation.heldout import TRAINING_DATA_FILE
from posescene.evaluation.judges import KeypointEstimator, SceneClassifier
from posescene.io import write_json_atomic, write_text_atomic
from posescene.tracking import log_run, resolve_tracking_uri
from posescene.world.architectures import Architecture, copy_tree, tiny_architecture, world_architecture
from posescene.world.data import HELD_OUT_POLICY, WorldData, concat, encode_texts, make_data, merge_ranges, overlaps
from posescene.world.loop import STAGES, Checkpoints
from posescene.world.measure import measure
from posescene.world.parts import PARTS, load_part, read_training_data, save_part
from posescene.world.report import readme, targets
from posescene.world.train import (
    cached_posterior,
    finetune_decoder,
    train_adapter,
    train_joint,
    train_judges,
    train_unet,
    train_vae,
    vae_decode,
)

JUDGE_RECON_IMAGES = 8192  # VAE reconstructions the judges train on (the rest: real images only)
MLFLOW_EXPERIMENT = "posescene-bootstrap"


def bootstrap(
    params: Params,
    *,
    progress: bool = True,
    out_dir: str | Path | None = None,
    reuse: Sequence[str] = (),
    tracking_uri: str | None = None,
    log_mlflow: bool = True,
    resume: bool = False,
    only: Sequence[str] = (),
    stop_early: bool = False,
) -> dict[str, Any]:
    """Train (or load) every part of the world into ``out_dir``, measure it, and record what it saw.

    Stages, in order (``STAGES``): ``vae`` (from scratch), ``decoder`` (decoder-only fine-tune, the latent
    space stays), ``judges`` (scene classifier + heatmap keypoint estimator), ``unet`` and ``adapter`` (from
    scratch), ``joint`` (U-Net + adapter fine-tuned together with adapter dropout). With
    ``bootstrap.init_from`` set, vae/unet/adapter are *continued from* that world instead of trained.
    ``reuse`` loads parts from ``out_dir`` instead. Every stage checkpoints to ``bootstrap.checkpoint_dir``
    every ``checkpoint_minutes``; ``resume=True`` continues from there (finished stages are loaded).
    ``only`` trains just those stages (others load when finished, else are skipped) and writes nothing to
    ``out_dir`` - for running independent stages as separate processes, then ``resume=True`` to assemble.
    ``stop_early`` (with ``resume``): stages with a checkpoint use it as their result even if unfinished
    (a deadline); the metrics record the step each stopped at.

    Returns the metrics written to ``bootstrap_metrics.json`` (empty with ``only``).
    """
    del progress  # hours of work: the trainers' bars always show (the stage contract's keyword)
    run = _Run.start(params, out_dir, reuse, resume, only, stop_early)
    bp = run.bp
    with run.timed("data"):
        train, held, extra = _world_data(run)
        fine = concat(train, extra)  # the data of the fine-tuning stages (decoder, judges, joint)
    with run.timed("vae"):
        vae, raw, raw_std = _vae(run, train, fine)
        scaling = float(vae.config.scaling_factor)
        latents = raw * scaling
        decoder_done = "vae" in run.reuse or bp.decoder_steps == 0
        if not decoder_done and run.wanted("decoder", bp.decoder_steps):
            vae = finetune_decoder(vae, fine, raw, raw_std, bp, run.seed, run.ckpt, run.device)
            run.record("decoder", ["vae"], run.fine_scenes, bp.decoder_steps, "decoder only (encoder frozen)")
            decoder_done = True
    with run.timed("judges"):
        classifier, estimator = _judges(run, vae, fine, raw, decoder_done)
    with run.timed("text"):
        text, text_idx, base_text_idx = _text_states(run, fine, held)
    n_train = len(train)
    with run.timed("unet"):
        unet = run.given("unet", "unet", "unet")
        if unet is None and run.wanted("unet", bp.unet_steps):
            unet = train_unet(run.arch, latents[:n_train], text, text_idx[:n_train], bp, run.seed, run.ckpt,
                              run.device)  # fmt: skip
            run.record("unet", ["unet"], run.train_scenes, bp.unet_steps, "from scratch", new=True)
    with run.timed("adapter"):
        adapter = run.given("adapter", "primary_adapter", "adapter")
        if adapter is None and unet is not None and run.wanted("adapter", bp.adapter_steps):
            adapter = train_adapter(run.arch, unet, latents[:n_train], train.maps, text, text_idx[:n_train], bp,
                                    run.seed, run.ckpt, run.device)  # fmt: skip
            run.record("adapter", ["primary_adapter"], run.train_scenes, bp.adapter_steps,
                       "from scratch, U-Net frozen", new=True)  # fmt: skip
    with run.timed("joint"):
        if unet is not None and adapter is not None and run.wanted("joint", bp.joint_steps):
            unet, adapter = train_joint(unet, adapter, latents, fine.maps, text, text_idx, bp, run.seed, run.ckpt,
                                        run.device, base_text_idx=base_text_idx)  # fmt: skip
            run.record("joint", ["unet", "primary_adapter"], run.fine_scenes, bp.joint_steps,
                       f"U-Net + adapter together, adapter dropout {bp.adapter_dropout:g}")  # fmt: skip

    if only:
        return {"only": list(only), "stages": run.ran}
    record = _ship(run, vae, classifier, estimator, unet, adapter)
    with run.timed("metrics"):
        metrics = _measure_shipped(run, held)
    metrics.update(run.timings_with_total())
    metrics["latent_scaling_factor"] = scaling
    metrics["train_images"] = len(train)
    metrics["finetune_images"] = len(fine)
    metrics["reused_parts"] = list(reuse)
    metrics["continued_from"] = bp.init_from or None
    metrics["stages"] = run.ran
    metrics["resumed"] = resume
    metrics["threads"] = torch.get_num_threads()
    metrics["device"] = str(run.device)
    metrics["shipped_bytes"] = sum(p.stat().st_size for p in run.out.rglob("*.safetensors"))
    metrics["targets"] = targets(metrics)
    write_json_atomic(run.out / "bootstrap_metrics.json", metrics)
    write_text_atomic(run.out / "README.md", readme(bp, metrics, run.seed, record))
    if log_mlflow:
        log_to_mlflow(params, metrics, run.out, tracking_uri)
    return metrics


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class _Run:
    """One bootstrap run: its settings, the scene ranges, the world it continues, and what it trained so far."""

    params: Params
    out: Path
    reuse: tuple[str, ...]
    only: tuple[str, ...]
    device: torch.device
    arch: Architecture
    ckpt: Checkpoints
    # half-open scene ranges: train [0, n_scenes), held-out [n_scenes, +n_heldout), extra [extra_first_scene, +extra)
    train_scenes: list[list[int]]
    held_scenes: list[list[int]]
    extra_scenes: list[list[int]]
    init: Path | None = None  # the (frozen copy of the) world this run continues
    ran: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage: how, steps, scenes, its runs
    parts: dict[str, list[list[int]]] = field(default_factory=dict)  # per shipped part: every scene it trained on
    timings: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    @property
    def bp(self) -> BootstrapParams:
        return self.params.bootstrap

    @property
    def seed(self) -> int:
        return self.params.seed

    @property
    def fine_scenes(self) -> list[list[int]]:
        """The scenes of the fine-tuning stages (decoder, judges, joint): training and extra scenes."""
        return self.train_scenes + self.extra_scenes

    @classmethod
    def start(
        cls, params: Params, out_dir: str | Path | None, reuse: Sequence[str], resume: bool, only: Sequence[str],
        stop_early: bool,
    ) -> _Run:  # fmt: skip
        """Check the options, pin threads, device and seed, and find the world to continue (if any)."""
        bp = params.bootstrap
        unknown = set(reuse) - set(PARTS)
        if unknown:
            raise ConfigError(f"reuse: unknown part(s) {sorted(unknown)}; allowed: {', '.join(PARTS)}")
        if set(only) - set(STAGES):
            raise ConfigError(f"only: unknown stage(s) {sorted(set(only) - set(STAGES))}; allowed: {', '.join(STAGES)}")
        torch.set_num_threads(cpu_threads(bp.threads))
        device = resolve_device(bp.device)
        torch.manual_seed(params.seed)
        arch = world_architecture() if bp.architecture == "world" else tiny_architecture(cross_attention_dim=384)
        if stop_early and not resume:
            raise ConfigError("stop_early uses the checkpoints of an earlier run: pass resume too")
        ckpt = Checkpoints(
            Path(bp.checkpoint_dir) if bp.checkpoint_dir else None, bp.checkpoint_minutes * 60, resume, stop_early
        )
        train_r = [[0, bp.n_scenes]]
        held_r = [[bp.n_scenes, bp.n_scenes + bp.n_heldout]]
        extra_r = [[bp.extra_first_scene, bp.extra_first_scene + bp.extra_scenes]] if bp.extra_scenes else []
        limit = params.synth.first_scene
        if overlaps(extra_r, train_r + held_r) or any(hi > limit for _, hi in extra_r + held_r):
            raise ConfigError(
                f"bootstrap.extra_first_scene/extra_scenes {extra_r} must not overlap training {train_r} or "
                f"held-out {held_r} scenes and must stay below synth.first_scene={limit} (the pipeline's own scenes)"
            )
        run = cls(params, Path(out_dir or bp.out_dir), tuple(reuse), tuple(only), device, arch, ckpt, train_r, held_r,
                  extra_r)  # fmt: skip
        if bp.init_from:
            run.init, record = _continued_world(Path(bp.init_from), ckpt, resume, held_r)
            run.parts = {k: [list(r) for r in v] for k, v in record["parts"].items()}
        return run

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record the wall time of a phase as ``time_<name>_s``."""
        start = time.perf_counter()
        yield
        self.timings[f"time_{name}_s"] = round(time.perf_counter() - start, 1)

    def timings_with_total(self) -> dict[str, float]:
        return {**self.timings, "time_total_s": round(time.perf_counter() - self.t0, 1)}

    def wanted(self, stage: str, steps: int) -> bool:
        """Train this stage now? (False: skip, unless finished in the checkpoints -> then it loads.)"""
        return steps > 0 and (not self.only or stage in self.only or self.ckpt.finished(stage, steps))

    def given(self, reuse_name: str, part: str, stage: str) -> Any | None:
        """A part this run does not train: loaded from out_dir (``--reuse``) or continued from ``init_from``;
        None when the stage is to train it."""
        if reuse_name in self.reuse:
            return load_part(self.out, part, self.device)
        if self.init is not None:
            model = load_part(self.init, part, self.device)
            self.ran[stage] = {"steps": 0, "how": f"continued from {self.bp.init_from}"}
            return model
        return None

    def record(
        self, stage: str, part_names: Sequence[str], ranges: Sequence[Sequence[int]], steps: int, how: str,
        new: bool = False,
    ) -> None:  # fmt: skip
        """What a stage trained, for the metrics and ``training_data.json``; ``new``: its parts start from scratch
        (the scenes of the world they would have continued from do not count)."""
        self.ran[stage] = {"steps": steps, "how": how, "scenes": merge_ranges(ranges), **self.ckpt.stats.get(stage, {})}
        for name in part_names:
            earlier = [] if new else self.parts.get(name, [])
            self.parts[name] = merge_ranges(earlier + [list(r) for r in ranges])


def _continued_world(
    src: Path, ckpt: Checkpoints, resume: bool, held_r: list[list[int]]
) -> tuple[Path, dict[str, Any]]:
    """The world ``bootstrap.init_from`` names (a frozen copy beside the checkpoints) and its training record."""
    init = src
    if ckpt.root is not None:
        # a frozen copy, so that a resumed run continues from the same weights even after out_dir
        # (often the same folder) has been overwritten
        init = ckpt.root / "init_world"
        if not (resume and (init / "unet" / "config.json").exists()):
            if not (src / "unet" / "config.json").exists():
                raise ModelLoadError(f"bootstrap.init_from={src}: not a world (no unet/)")
            shutil.rmtree(init, ignore_errors=True)
            copy_tree(src, init)
    record = read_training_data(init)
    seen = [r for rs in record["parts"].values() for r in rs]
    if overlaps(seen, held_r):
        raise ConfigError(f"init_from {src} trained on scenes {merge_ranges(seen)}, which overlap held-out {held_r}")
    return init, record


# ----------------------------------------------------------------------------------------------- phases
def _world_data(run: _Run) -> tuple[WorldData, WorldData, WorldData | None]:
    """(training, held-out, extra) scenes. The training and extra scenes follow the world's coupling and caption
    policy; the held-out scenes are always independent with full captions, so they hold both typical and atypical
    pose-scene combinations."""
    bp, params = run.bp, run.params
    kw = dict(poses=bp.poses_per_scene, size=run.arch.resolution, seed=run.seed, beta=params.poses.beta,
              radius=params.render.radius)  # fmt: skip
    policy = dict(coupling=bp.coupling, sceneless_captions=bp.sceneless_captions,
                  mismatched_captions=bp.mismatched_captions, caption_actions=bp.caption_actions)  # fmt: skip
    train = make_data(0, bp.n_scenes, desc="synth train", **kw, **policy)
    held = make_data(bp.n_scenes, bp.n_heldout, desc="synth held-out", **kw, **HELD_OUT_POLICY)
    extra = (
        make_data(bp.extra_first_scene, bp.extra_scenes, desc="synth extra", **kw, **policy)
        if bp.extra_scenes else None
    )  # fmt: skip
    return train, held, extra


def _vae(run: _Run, train: WorldData, fine: WorldData) -> tuple[AutoencoderKL, torch.Tensor, torch.Tensor]:
    """The VAE (reused, continued or trained) and the unscaled latent posterior (mean, std) of the fine-tuning
    images; a VAE trained here gets SD's latent scale: latents x scaling_factor have ~unit std, which the noise
    schedule assumes."""
    bp = run.bp
    vae = run.given("vae", "vae", "vae")
    trained = vae is None
    if trained:
        if not run.wanted("vae", bp.vae_steps):
            raise ConfigError("the vae stage is needed by every other stage: include it in --only or finish it first")
        vae = train_vae(run.arch, train, bp, run.seed, run.ckpt, run.device)
        vae.register_to_config(scaling_factor=1.0)
        run.record("vae", ["vae"], run.train_scenes, bp.vae_steps, "from scratch", new=True)
    raw, raw_std = cached_posterior(vae, fine.images, run.ckpt)
    if trained:
        vae.register_to_config(scaling_factor=float(1.0 / raw[: len(train)].std()))
    return vae, raw, raw_std


def _judges(
    run: _Run, vae: AutoencoderKL, fine: WorldData, raw: torch.Tensor, decoder_done: bool
) -> tuple[SceneClassifier | None, KeypointEstimator | None]:
    """Both judges: reused, kept from the continued world (with judge_steps 0: they judge images, and a coupled
    world draws the same scenes and people, only in other combinations), or trained on real images and VAE
    reconstructions (of at most JUDGE_RECON_IMAGES rows: decoding all takes many minutes on one thread)."""
    bp = run.bp
    source = run.out if "judges" in run.reuse else run.init if bp.judge_steps == 0 else None
    if source is not None:
        return load_part(source, "scene_classifier", run.device), load_part(source, "keypoint_estimator", run.device)
    if not run.wanted("judges", bp.judge_steps):
        return None, None
    if not decoder_done:
        raise ConfigError("the judges train on decoder reconstructions: finish the decoder stage first")
    recon = None
    if not run.ckpt.finished("judges", bp.judge_steps):
        rows = np.arange(0, len(fine), max(1, -(-len(fine) // JUDGE_RECON_IMAGES)))
        recon = (rows, vae_decode(vae, raw[rows]))
    classifier, estimator = train_judges(run.arch.resolution, fine, recon, bp, run.seed, run.ckpt, run.device)
    run.record("judges", ["scene_classifier", "keypoint_estimator"], run.fine_scenes, bp.judge_steps,
               "from scratch, real + VAE-reconstructed images", new=True)  # fmt: skip
    return classifier, estimator


def _text_states(
    run: _Run, fine: WorldData, held: WorldData
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(states of the unique captions, the row of each fine-tuning caption, the row of its true caption when the
    base model's rows read those: ``caption_policy_rows: adapter``, else None), only when a diffusion stage will
    really train (finished ones load from their checkpoint); empty otherwise."""
    bp = run.bp
    diffusion = (("unet", bp.unet_steps), ("adapter", bp.adapter_steps), ("joint", bp.joint_steps))
    if not any(run.wanted(s, n) and not run.ckpt.finished(s, n) for s, n in diffusion):
        return torch.empty(0), torch.empty(0, dtype=torch.long), None
    adapter_rows_only = bp.caption_policy_rows == "adapter"
    text, unique = encode_texts(fine.captions + held.captions + (fine.true_captions if adapter_rows_only else []),
                                device=run.device)  # fmt: skip
    row = {c: i for i, c in enumerate(unique)}
    base = torch.tensor([row[c] for c in fine.true_captions]) if adapter_rows_only else None
    return text, torch.tensor([row[c] for c in fine.captions]), base


def _ship(
    run: _Run, vae: AutoencoderKL, classifier: SceneClassifier | None, estimator: KeypointEstimator | None,
    unet: UNet2DConditionModel | None, adapter: T2IAdapter | None,
) -> dict[str, Any]:  # fmt: skip
    """Write the parts and ``training_data.json`` (the scenes each part trained on, the data policy); returns the
    record."""
    missing = [n for n, m in (("judges", estimator), ("unet", unet), ("adapter", adapter)) if m is None]
    if missing:
        raise ConfigError(f"stage(s) {missing} have no steps and nothing to load them from")
    assert classifier is not None and estimator is not None and unet is not None and adapter is not None
    bp, out = run.bp, run.out
    out.mkdir(parents=True, exist_ok=True)
    shipped = {"vae": vae, "scene_classifier": classifier, "keypoint_estimator": estimator, "unet": unet,
               "primary_adapter": adapter}  # fmt: skip
    for name, model in shipped.items():
        save_part(model, out / name)
    seen = [r for rs in run.parts.values() for r in rs]
    if overlaps(seen, run.held_scenes):  # pragma: no cover - guarded by the checks of _Run.start
        raise ConfigError(f"training scenes {merge_ranges(seen)} overlap the held-out scenes {run.held_scenes}")
    record = {
        "generator": "posescene.synth", "seed": run.seed, "parts": run.parts, "measured_on": run.held_scenes,
        # the data policy of the stages this run trained (issue 23); a continued world inherits nothing else
        "coupling": bp.coupling, "sceneless_captions": bp.sceneless_captions,
        "mismatched_captions": bp.mismatched_captions, "caption_actions": bp.caption_actions,
        "caption_policy_rows": bp.caption_policy_rows,
        "caption_dropout": bp.caption_dropout, "continued_from": bp.init_from or None,
    }  # fmt: skip
    write_json_atomic(out / TRAINING_DATA_FILE, record)
    return record


def _measure_shipped(run: _Run, held: WorldData) -> dict[str, Any]:
    """Measure what was shipped (fp16 weights round-tripped), not the in-memory fp32 models."""
    vae, classifier, estimator = (load_part(run.out, name, run.device) for name in
                                  ("vae", "scene_classifier", "keypoint_estimator"))  # fmt: skip
    return measure(run.out, held, vae, classifier, estimator, run.bp, run.seed, run.device)


def log_to_mlflow(params: Params, metrics: dict[str, Any], out: Path, tracking_uri: str | None) -> str:
    """One run in experiment ``posescene-bootstrap`` (``tracking_uri``, else the project's one resolver:
    params, then ``MLFLOW_TRACKING_URI``, then the embedded SQLite store); returns its id."""
    logged = {f"bootstrap.{k}": v for k, v in params.bootstrap.model_dump().items()} | {"seed": params.seed}
    # MLflow metric names allow no '@' ("pck@0.1img" -> "pck_at_0.1img")
    numeric = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    uri = tracking_uri or resolve_tracking_uri(params.mlflow.tracking_uri)
    return log_run(uri, MLFLOW_EXPERIMENT, "bootstrap", logged, numeric, [out / "bootstrap_metrics.json"])
