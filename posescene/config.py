"""params.yaml schema, validated once at the edge.

Every stage calls :func:`load_params`; a wrong key or value fails at start with the key's dotted
path and the allowed values/keys, before any data is touched.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from posescene.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthParams(_Section):
    out_dir: str = "data/synth"
    n_scenes: int = Field(120, ge=1)
    poses_per_scene: int = Field(6, ge=1)
    size: int = Field(64, ge=32, le=2048)


class IngestParams(_Section):
    source: str = "data/synth"
    source_kind: Literal["imagefolder", "hf_dataset"] = "imagefolder"
    out_dir: str = "data/ingested"
    max_pixels: int = Field(89_478_485, ge=1)
    min_side: int = Field(16, ge=1)


class PosesParams(_Section):
    detector: Literal["mediapipe", "openpose", "dwpose", "groundtruth"] = "groundtruth"
    weights: str | None = None
    beta: float = Field(0.05, ge=0.0, le=1.0)
    min_score: float = Field(0.3, ge=0.0, le=1.0)
    batch_size: int = Field(64, ge=1)
    workers: int = Field(1, ge=1)
    runner: Literal["local", "dask"] = "local"
    dask_workers: int = Field(2, ge=1)
    out_dir: str = "data/lattices"


class PairsParams(_Section):
    strategy: Literal["scene", "caption", "random"] = "scene"
    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    max_pairs_per_group: int = Field(30, ge=1)
    out: str = "data/pairs.parquet"


class RenderParams(_Section):
    radius: int = Field(1, ge=0, le=64)
    limbs: bool = False
    out_dir: str = "data/maps"


class ModelParams(_Section):
    base: str = "build/world/pipeline"
    primary_adapter: str = "models/world/primary_adapter"
    resolution: int = Field(64, ge=32, le=2048)
    adapter_in_channels: Literal[1, 3] = 1
    adapter_invert: bool = False


class WorldParams(_Section):
    """The built-in world: shipped weights (git) and the assembled standard pipeline directory."""

    shipped_dir: str = "models/world"
    pipeline_dir: str = "build/world/pipeline"


class BootstrapParams(_Section):
    """Training the built-in world from scratch (frozen DVC stage; see README)."""

    out_dir: str = "models/world"
    n_scenes: int = Field(1200, ge=8)
    poses_per_scene: int = Field(6, ge=2)
    vae_steps: int = Field(1500, ge=1)
    unet_steps: int = Field(4000, ge=1)
    adapter_steps: int = Field(2000, ge=1)
    judge_steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=1)


class CacheParams(_Section):
    """Frozen-model caches: VAE latents of every image and text states of every caption."""

    out_dir: str = "data/cache"
    batch_size: int = Field(64, ge=1)


class TrainParams(_Section):
    """Secondary-adapter fine-tuning (METHOD.md steps 3-4)."""

    out_dir: str = "build/train"
    checkpoint_dir: str = "checkpoints/train"
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_steps: int = Field(20, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    balance: Literal["scale", "fixed", "uncertainty"] = "scale"
    lambda_diff: float = Field(1.0, ge=0)  # only for balance=fixed: J = L_bal + lambda * L_diff
    running_mean_momentum: float = Field(0.99, gt=0, lt=1)
    mask_margin: float = Field(0.15, ge=0, le=1)  # person box grown by this fraction of its size
    checkpoint_every: int = Field(100, ge=1)
    validate_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)


class PromotionParams(_Section):
    drift_margin: float = Field(0.0, ge=0)  # relative drift reduction required vs champion/primary
    fidelity_tolerance: float = Field(0.1, ge=0)  # allowed absolute PCK drop vs primary


class AblationRun(_Section):
    name: str
    adapter: str  # a trained secondary-adapter directory (e.g. from a fixed-lambda run)


class EvaluateParams(_Section):
    out_dir: str = "reports"
    n_prompts: int = Field(8, ge=1)
    seeds: list[int] = [0, 1]
    n_poses: int = Field(4, ge=2)
    steps: int = Field(20, ge=1)
    guidance_scale: float = Field(5.0, ge=0)
    batch_size: int = Field(16, ge=1)
    models: list[Literal["base", "primary", "secondary"]] = ["base", "primary", "secondary"]
    ablations: list[AblationRun] = []
    bootstrap_samples: int = Field(1000, ge=10)
    clip_model: str | None = None  # local CLIP dir for text alignment; null: world scene judge only
    lpips_weights: str | None = None  # local perceptual-metric weights; null: skipped with a notice
    promotion: PromotionParams = PromotionParams()


class OpsParams(_Section):
    """Scheduled deployments and locking (issue #6)."""

    pipeline_cron: str = "0 2 * * *"
    lock_path: str = "build/posescene.lock"


class MlflowParams(_Section):
    tracking_uri: str | None = None
    experiment: str = "posescene"
    registered_model: str = "posescene-secondary-adapter"


class Params(_Section):
    seed: int = 0
    synth: SynthParams = SynthParams()
    ingest: IngestParams = IngestParams()
    poses: PosesParams = PosesParams()
    pairs: PairsParams = PairsParams()
    render: RenderParams = RenderParams()
    model: ModelParams = ModelParams()
    world: WorldParams = WorldParams()
    bootstrap: BootstrapParams = BootstrapParams()
    cache: CacheParams = CacheParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    ops: OpsParams = OpsParams()
    mlflow: MlflowParams = MlflowParams()


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
    if error["type"] == "extra_forbidden":
        owner = _section_for(loc)
        allowed = ", ".join(owner.model_fields) if owner else "?"
        return f"{path}: unknown key. Allowed keys here: {allowed}"
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


def parse_set_option(items: list[str] | None) -> dict[str, Any]:
    """``["poses.beta=0.1"]`` -> ``{"poses.beta": 0.1}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set poses.beta=0.1")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
