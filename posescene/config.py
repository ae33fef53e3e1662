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
