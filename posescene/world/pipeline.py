"""Stage ``world``: the shipped world's weights and the packaged MiniLM as a standard diffusers pipeline directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from posescene.world.architectures import assemble_world_pipeline

if TYPE_CHECKING:
    from posescene.config import Params


@dataclass(frozen=True)
class WorldSummary:
    """Where the ``world`` stage read the weights and wrote the pipeline."""

    shipped_dir: str
    pipeline_dir: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def world(params: Params, *, progress: bool = True) -> WorldSummary:
    """Assemble ``world.pipeline_dir`` from ``world.shipped_dir`` (seconds; params.yaml ``world``)."""
    del progress  # a copy and a re-save: nothing to show
    p = params.world
    return WorldSummary(str(p.shipped_dir), str(assemble_world_pipeline(p.shipped_dir, p.pipeline_dir)))
