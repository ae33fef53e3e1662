"""params.yaml schema, validated once at the edge.

Every stage calls :func:`load_params`; a wrong, missing or unknown key fails at start with the key's
dotted path and the allowed values/keys, before any data is touched.

One source of defaults: the values live in ``params.yaml`` only (as in DVC's example-get-started). This
schema holds types, ranges and what a key means, but no default value, so every key is required and a
second copy cannot drift (``tests/test_one_source.py``). Code that needs a complete configuration without
a file of its own (tests, notebooks) uses :func:`default_params`: the project's params.yaml plus overrides.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from posescene.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")  # the CLI's and flows' --params default: the working directory's file
PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the checkout's (editable install)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthParams(_Section):
    out_dir: str
    n_scenes: int = Field(ge=1)
    first_scene: int = Field(ge=0)  # scene indices first_scene.. (the world trained on lower ones)
    poses_per_scene: int = Field(ge=1)
    size: int = Field(ge=32, le=2048)
    # probability that a scene shows only actions typical of its kind (synth.TYPICAL_ACTIONS); 0 = independent;
    # null: the coupling the built-in world trained on, read by the synth stage (posescene.data.synth.data_coupling)
    coupling: float | None = Field(ge=0, le=1)


class IngestParams(_Section):
    source: str
    source_kind: Literal["imagefolder", "hf_dataset"]
    out_dir: str
    max_pixels: int = Field(ge=1)
    min_side: int = Field(ge=1)


class PosesParams(_Section):
    detector: Literal["mediapipe", "openpose", "dwpose", "groundtruth"]
    weights: str | None
    beta: float = Field(ge=0.0, le=1.0)
    min_score: float = Field(ge=0.0, le=1.0)
    min_detection_confidence: float = Field(ge=0.0, le=1.0)
    min_presence_confidence: float = Field(ge=0.0, le=1.0)
    max_persons: int = Field(ge=1)
    # mediapipe's person proposals (posescene.data.detectors.MediaPipeDetector): "landmarker" alone is the
    # whole-image single-person path; "faces" adds the face detector's body crops (multi-person, upper body)
    person_proposals: list[Literal["landmarker", "faces", "hog"]] = Field(min_length=1)
    batch_size: int = Field(ge=1)
    workers: int = Field(ge=1)
    runner: Literal["local", "dask"]
    dask_workers: int = Field(ge=1)
    out_dir: str

    @field_validator("person_proposals")
    @classmethod
    def _distinct_proposals(cls, value: list[str]) -> list[str]:
        if len(set(value)) < len(value):
            raise ValueError(f"lists a proposal twice ({value}); each of landmarker, faces, hog at most once")
        return value


class PairsParams(_Section):
    strategy: Literal["scene", "caption", "random"]
    heldout_fraction: float = Field(ge=0.0, lt=1.0)
    max_pairs_per_group: int = Field(ge=1)
    out: str


class RenderParams(_Section):
    radius: int = Field(ge=0, le=64)
    limbs: bool
    out_dir: str


class ModelParams(_Section):
    base: str
    primary_adapter: str  # params.yaml may say null: the built-in world's own (see Params._world_primary)
    resolution: int = Field(ge=32, le=2048)
    adapter_in_channels: Literal[1, 3]
    adapter_invert: bool


class WorldParams(_Section):
    """The built-in world: shipped weights (git) and the assembled standard pipeline directory."""

    shipped_dir: str
    pipeline_dir: str


class BootstrapParams(_Section):
    """Training the built-in world from scratch (frozen DVC stage; see models/world/README.md).

    Sizes and steps are params so that a test can run the whole bootstrap in seconds
    (``architecture: tiny``, a few steps each) with exactly the code path of the real run.
    """

    out_dir: str
    architecture: Literal["world", "tiny"]  # tiny: 32 px test models (posescene.world)
    n_scenes: int = Field(ge=8)  # training scenes 0..n_scenes-1
    poses_per_scene: int = Field(ge=2)
    n_heldout: int = Field(ge=1)  # held-out scenes n_scenes..n_scenes+n_heldout-1 (never trained on)
    vae_steps: int = Field(ge=1)
    unet_steps: int = Field(ge=1)
    adapter_steps: int = Field(ge=1)
    judge_steps: int = Field(ge=0)  # 0 with init_from: keep that world's judges
    batch_size: int = Field(ge=1)
    vae_lr: float = Field(gt=0)
    unet_lr: float = Field(gt=0)
    adapter_lr: float = Field(gt=0)
    judge_lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)  # AdamW, the U-Net, adapter and joint stages
    vae_kl_weight: float = Field(ge=0)
    vae_edge_weight: float = Field(ge=0)  # L1 on image gradients: keeps thin limbs sharp
    caption_dropout: float = Field(ge=0, le=1)  # empty caption, for classifier-free guidance
    ema_decay: float = Field(ge=0, lt=1)  # U-Net EMA (0 disables)
    eval_samples: int = Field(ge=1)  # held-out images generated per model for the metrics
    eval_steps: int = Field(ge=1)  # DDIM steps
    eval_guidance: list[float]  # CFG scales evaluated; the first is the headline
    eval_batch_size: int = Field(ge=1)
    threads: int = Field(ge=0)  # torch threads; 0: all cores
    device: str  # auto (CUDA when available) | cpu | cuda | cuda:N; checked when the bootstrap starts
    # stages trained under bf16 autocast: pays on a GPU; on this CPU fp32 is ~2x faster (bench_world_step.py)
    bf16_stages: list[Literal["vae", "decoder", "judges", "unet", "adapter", "joint"]]
    min_snr_gamma: float = Field(ge=0)  # min-SNR-gamma loss weighting of the diffusion stages (0: off)
    # continue from an existing world (its vae/unet/primary_adapter are loaded, not trained; "" = from scratch)
    init_from: str
    extra_first_scene: int = Field(ge=0)  # extra fresh scenes for the decoder/judges/joint stages
    extra_scenes: int = Field(ge=0)
    decoder_steps: int = Field(ge=0)  # decoder-only VAE fine-tune (encoder frozen); 0 skips it
    decoder_lr: float = Field(gt=0)
    decoder_batch_size: int = Field(ge=1)  # the decoder step costs ~5x a judge step
    judge_heatmap_sigma: float = Field(gt=0)  # Gaussian heatmap target (cells of the H/2 heatmap)
    joint_steps: int = Field(ge=0)  # U-Net + adapter fine-tuned together; 0 skips it
    joint_unet_lr: float = Field(gt=0)
    joint_adapter_lr: float = Field(gt=0)
    joint_ema_decay: float = Field(ge=0, lt=1)
    adapter_dropout: float = Field(ge=0, le=1)  # rows without adapter features in the joint stage
    # the world's training data (issue 23): probability that a scene shows only its kind's typical actions,
    # and the share of captions that leave the scene phrase out (as real captions often do)
    coupling: float = Field(ge=0, le=1)
    sceneless_captions: float = Field(ge=0, le=1)
    mismatched_captions: float = Field(ge=0, le=1)  # captions naming another kind: the text is unreliable
    caption_actions: bool  # false: no training caption names the action (as the evaluation's captions)
    # which joint-stage rows read the sceneless/mismatched captions: all, or only those with the adapter (the base
    # model's rows read the true caption: a base trained on captions that name the place, an adapter on web ones)
    caption_policy_rows: Literal["all", "adapter"]
    checkpoint_dir: str  # "" disables checkpoints
    checkpoint_minutes: float = Field(ge=0)  # a killed run loses at most this much training

    @model_validator(mode="after")
    def _caption_shares(self) -> BootstrapParams:
        if self.sceneless_captions + self.mismatched_captions > 1:
            raise ValueError(
                f"sceneless_captions ({self.sceneless_captions}) + mismatched_captions ({self.mismatched_captions})"
                " exceed 1: they are shares of the same captions"
            )
        return self


class CacheParams(_Section):
    """Frozen-model caches: VAE latents of every image and text states of every caption."""

    out_dir: str
    batch_size: int = Field(ge=1)
    threads: int = Field(ge=0)  # torch intra-op threads, fixed: the bytes may depend on it; 0: all cores
    device: str  # cpu (the same bytes on any machine of the same CPU kind) | auto | cuda[:N]


class TrainParams(_Section):
    """Secondary-adapter fine-tuning (docs/method.md, steps 3-4)."""

    out_dir: str
    checkpoint_dir: str
    threads: int = Field(ge=0)  # torch intra-op threads, fixed: the bytes may depend on it; 0: all cores
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    gradient_accumulation_steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    max_grad_norm: float = Field(gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"]
    gradient_checkpointing: bool
    balance: Literal["scale", "fixed", "uncertainty", "constraint"]
    balance_reading: Literal["whole", "person", "distill"]  # what L_bal measures (docs/method.md)
    lambda_diff: float = Field(ge=0)  # only for balance=fixed: J = L_bal + lambda * L_diff
    uncertainty_lr: float = Field(gt=0)  # only for balance=uncertainty: lr of the log-variances
    constraint_epsilon: float = Field(ge=0, le=1)  # only for balance=constraint: the allowed pose-loss fraction
    dual_lr: float = Field(gt=0)  # only for balance=constraint: dual-ascent step of the multiplier mu
    running_mean_momentum: float = Field(gt=0, lt=1)
    mask_margin: float = Field(ge=0, le=1)  # person box grown by this fraction of its size
    # readings of the objective (issue 25; docs/method.md): each off by default, i.e. today's behaviour
    diff_target: Literal["primary", "text"]  # L_diff's target: eps_P(A_0) | the U-Net without adapter
    diff_timestep_power: float = Field(ge=0)  # L_diff weighted by ((t+1)/T)^p, mean 1; 0: uniform
    guided_diff: bool  # L_diff on the guided prediction (classifier-free guidance at evaluate.guidance_scale)
    empty_caption_share: float = Field(ge=0, lt=1)  # rows trained with the empty caption
    caption_actions: bool  # false: training captions lose their action phrases (as the evaluation's)
    secondary_role: Literal["replace", "correct"]  # correct: P-Ad(B_0) + S-Ad(B_0), S-Ad from zero output
    cross_pose_weight: float = Field(ge=0)  # beyond the patent: + w x L_cross in the scene term; 0: off
    effective_scales: list[float]  # the primary's scales of the final effective-scale probe; []: off
    turned_down_margin: float = Field(ge=0, le=1)  # "turned-down primary" when the drift gap > -margin
    checkpoint_every: int = Field(ge=1)  # atomic step_<n>/ under checkpoint_dir; the last 2 are kept
    validate_every: int = Field(ge=1)  # validation grid (held-out prompt x poses, primary vs secondary)
    validation_poses: int = Field(ge=1)
    validation_steps: int = Field(ge=1)  # DDIM steps of the validation grid
    log_every: int = Field(ge=1)  # MLflow metrics and the progress bar
    diagnose_every: int = Field(ge=1)  # gradient norms + pose sensitivity (at step 1 and every n steps)
    probe_size: int = Field(ge=1)  # rows of the fixed probe batch of the pose sensitivity

    @field_validator("effective_scales")
    @classmethod
    def _effective_scales(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("scales must be > 0 (scale 0, the base model, is always on the curve)")
        return sorted(set(v))

    @model_validator(mode="after")
    def _constraint_needs_distill(self) -> TrainParams:
        if self.balance == "constraint" and self.balance_reading != "distill":
            raise ValueError(
                f"balance 'constraint' holds the pose-loss fraction L_distill / C under epsilon: it needs "
                f"balance_reading 'distill' (got {self.balance_reading!r})"
            )
        return self


class PromotionParams(_Section):
    """The registry gate (posescene.evaluation.promotion): every check on the pessimistic end of its 95% CI."""

    metric: Literal["drift_rmse", "drift_ssim"]  # the drift that must go down
    drift_margin: float = Field(ge=0, lt=1)  # drift ratio vs primary/champion: upper bound <= 1 - margin
    fidelity_floor: float = Field(ge=0, le=2)  # (F_S - chance) / (F_P - chance): lower bound >= floor
    min_primary_fidelity: float = Field(ge=0, lt=1)  # primary's normalised fidelity: lower bound > this


class AblationRun(_Section):
    name: str
    adapter: str  # a trained secondary-adapter directory (e.g. from a fixed-lambda run)
    # how it was trained (its train.secondary_role): `replace` draws the adapter alone; `correct` draws the model as
    # trained, P-Ad at 1 plus the adapter (a correction is meaningless without the primary it corrects)
    role: Literal["replace", "correct"] = "replace"


FidelityMeasure = Literal["oks_body", "oks", "keypoint_ap", "pck@0.05box", "pck@0.1box", "pck@0.2box", "keypoint_error"]


# the seed of each held-out prompt's second base image: the drift a new noise causes ("a new scene") is the unit
# in which the evaluation states every drift (posescene.evaluation.heldout uses it)
NEW_NOISE_SEED = 999_983


class AlternativesParams(_Section):
    """What a user can do without training, drawn beside the adapters (sampling.sampler.Injection)."""

    mask_margins: list[float]  # the primary's features masked to the pose's region grown by each margin; [] = off
    masked_scales: list[float]  # the primary masked at the smallest margin, at these scales too (both knobs); [] = off
    steps_fractions: list[float]  # the primary's features during the first fraction of steps only; [] = off
    both_weights: list[float]  # the secondary added to the primary at scale 1 with each weight; [] = off
    inpaint_margin: float | None = Field(ge=0, le=1)  # the inpainting bound's region margin; null = off
    placebo_scale: float | None = Field(gt=0)  # the primary at this off-grid scale, compared like a candidate

    @field_validator("mask_margins")
    @classmethod
    def _margins(cls, v: list[float]) -> list[float]:
        if any(not 0 <= x <= 1 for x in v):
            raise ValueError("margins are fractions of the image side in [0, 1]")
        return sorted(set(v))

    @field_validator("masked_scales")
    @classmethod
    def _masked_scales(cls, v: list[float]) -> list[float]:
        if any(x <= 0 or x == 1 for x in v):
            raise ValueError("scales must be > 0 and not 1 (the masked primary at scale 1 is the mask's own arm)")
        return sorted(set(v))

    @property
    def masked_margin(self) -> float:
        """The ``masked`` family's region margin: the smallest of ``mask_margins`` (0 when there is none)."""
        return min(self.mask_margins, default=0.0)

    @model_validator(mode="after")
    def _masked_needs_a_mask(self) -> AlternativesParams:
        if self.masked_scales and not self.mask_margins:
            raise ValueError("masked_scales sweeps the mask at its smallest margin: set mask_margins too")
        return self

    @field_validator("steps_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < x < 1 for x in v):
            raise ValueError("fractions must lie strictly between 0 (the base model) and 1 (the scale arm)")
        return sorted(set(v))

    @field_validator("both_weights")
    @classmethod
    def _weights(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("weights must be > 0 (weight 0 is the primary alone)")
        return sorted(set(v))


class EvaluateParams(_Section):
    """Drift vs fidelity frontier, matched-fidelity comparison and the promotion gate (evaluation.evaluate)."""

    out_dir: str
    n_prompts: int = Field(ge=1)  # held-out captions (round-robin over scene kinds), action phrases removed
    seeds: list[int] = Field(min_length=1)  # sets = prompts x seeds, each with its own initial noise
    n_poses: int = Field(ge=2)  # held-out poses per set (one image per pose and arm, same noise)
    scales: list[float] = Field(min_length=2)  # adapter_conditioning_scale grid
    adapters: list[Literal["primary", "secondary"]] = Field(min_length=1)
    compare_champion: bool  # re-evaluate the registry's champion at scale 1 on the same sets and poses
    sampler: Literal["ddim", "dpmsolver"]
    steps: int = Field(ge=1)  # sampler steps
    guidance_scale: float = Field(ge=0)
    batch_size: int = Field(ge=1)  # images per U-Net batch (rows of every arm are batched together)
    device: str  # auto (cuda if available) | cpu | cuda | cuda:1 ...
    bf16: bool  # the sampler's U-Net under bf16 autocast (ModelBank.sample)
    store: str | None  # finished batches' images by content key (resume, sharding: posescene.shards); null: off
    ablations: list[AblationRun]  # compared with the primary's frontier like the secondary
    ablation_scales: list[float] = Field(min_length=1)  # their scales (Δdrift needs only 1; the primary's curve)
    secondary_scales: list[float] = Field(min_length=1)  # the secondary's scales (1 is the candidate)
    alternatives: AlternativesParams
    mask_margin: float = Field(ge=0, le=1)  # person box grown by this fraction of max(w, h)
    fidelity: FidelityMeasure  # the headline fidelity measure of the frontier and the gate
    min_score: float = Field(ge=0, le=1)  # a detected point counts when its score is at least this
    pose_judge: Literal["auto", "world", "mediapipe", "openpose", "dwpose", "none"]  # auto: world or mediapipe
    pose_judge_weights: str | None  # openpose/dwpose weights (local dir)
    scene_judge: Literal["auto", "world", "none"]  # auto: the world's scene classifier for the world
    bootstrap_samples: int = Field(ge=10)
    clip_model: str | None  # local CLIP dir for text alignment; null: world scene judge only
    lpips_weights: str | None  # TorchScript LPIPS file; null: skipped with a notice (never downloaded)
    promotion: PromotionParams

    @field_validator("scales")
    @classmethod
    def _scales_hold_base_and_one(cls, v: list[float]) -> list[float]:
        if 0.0 not in v or 1.0 not in v or any(x < 0 for x in v):
            raise ValueError("must contain 0 (the base model) and 1 (the adapters as trained), all >= 0")
        return sorted(set(v))

    @field_validator("seeds")
    @classmethod
    def _seeds_leave_the_new_noise_free(cls, v: list[int]) -> list[int]:
        if NEW_NOISE_SEED in v or len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct and not {NEW_NOISE_SEED} (the new-noise reference's seed)")
        return v

    @field_validator("ablation_scales", "secondary_scales")
    @classmethod
    def _ablation_scales_hold_one(cls, v: list[float]) -> list[float]:
        if 1.0 not in v or any(x <= 0 for x in v):
            raise ValueError("must contain 1 (the adapter as trained), all > 0 (scale 0 is the base model)")
        return sorted(set(v))


class OpsParams(_Section):
    """Scheduled deployments, locking and scale-out (docs/operations.md)."""

    pipeline_cron: str  # the nightly pipeline deployment's schedule (cron, in pipeline_timezone)
    pipeline_timezone: str
    lock_path: str  # one lock per checkout: runs that write data/registry queue on it
    lock_timeout_s: float = Field(ge=-1)  # wait this long for another run (-1: forever, 0: fail at once)
    concurrency_limit: str  # Prefect global concurrency limit (when a server is configured)
    dask_address: str | None  # poses.runner=dask: an existing scheduler (tcp://host:8786); null: LocalCluster


class MlflowParams(_Section):
    tracking_uri: str | None
    experiment: str
    registered_model: str


class Params(_Section):
    seed: int
    synth: SynthParams
    ingest: IngestParams
    poses: PosesParams
    pairs: PairsParams
    render: RenderParams
    model: ModelParams
    world: WorldParams
    bootstrap: BootstrapParams
    cache: CacheParams
    train: TrainParams
    evaluate: EvaluateParams
    ops: OpsParams
    mlflow: MlflowParams

    @model_validator(mode="before")
    @classmethod
    def _world_primary(cls, raw: Any) -> Any:
        """``model.primary_adapter: null`` is the built-in world's own primary (``world.shipped_dir``), so one
        param switches the world: its U-Net (through the assembled pipeline) and its primary together."""
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and raw["model"].get("primary_adapter") is None:
            world = raw.get("world") if isinstance(raw.get("world"), dict) else {}
            if "primary_adapter" in raw["model"] and world.get("shipped_dir"):
                raw = {**raw, "model": {**raw["model"], "primary_adapter": f"{world['shipped_dir']}/primary_adapter"}}
        return raw


def _section_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (for listing the allowed keys)."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) for p in loc)
    if error["type"] == "missing":
        return (
            f"{path}: missing. Every key is required (params.yaml is the one place defaults live): "
            f"copy it from {PROJECT_PARAMS}"
        )
    if error["type"] == "extra_forbidden":
        owner = _section_for(loc)
        allowed = ", ".join(owner.model_fields) if owner else "?"
        return f"{path}: unknown key. Allowed keys here: {allowed}"
    if not loc:  # a whole-file check (a before-validator): its message names the keys
        return str(error["msg"]).removeprefix("Value error, ")
    owner = _section_for(loc)
    hint = ""
    if owner is not None:
        field = owner.model_fields.get(str(loc[-1]))
        if field is not None and typing.get_origin(field.annotation) is Literal:
            hint = " Allowed values: " + ", ".join(repr(v) for v in typing.get_args(field.annotation))
    return f"{path}: {error['msg']} (got {error.get('input')!r}).{hint}"


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source} is invalid:\n  {lines}") from None


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml; ``overrides`` maps dotted keys (``poses.beta``) to values."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such params file. Run from the project root or pass --params.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        _apply_override(raw, dotted, value)
    return parse_params(raw, source=str(path))


def default_params(overrides: dict[str, Any] | None = None) -> Params:
    """The project's own params.yaml (the defaults) with ``overrides`` (dotted keys) applied."""
    return load_params(PROJECT_PARAMS, overrides)


def parse_set_option(items: list[str] | None) -> dict[str, Any]:
    """``["poses.beta=0.1"]`` -> ``{"poses.beta": 0.1}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set poses.beta=0.1")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
