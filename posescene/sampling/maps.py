"""Conditioning maps: poses drawn as the adapter's input, exactly as for training.

:func:`posescene.data.render.render_lattice` at the pose's own map side u = min(w, h) with ``render.radius`` /
``render.limbs``, resized to the model resolution with :func:`posescene.data.render.map_tensor` (min-pooling: no point
vanishes), then put in the adapter's input convention by :func:`posescene.models.prepare_adapter_input`
(``model.adapter_invert``, ``model.adapter_in_channels``), the function training uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from posescene.models import prepare_adapter_input
from posescene.sampling.pose import Pose


def condition_maps(
    poses: Sequence[Pose], resolution: int, radius: int, limbs: bool, in_channels: int, invert: bool
) -> torch.Tensor:
    """Adapter inputs (N, in_channels, res, res) in [0, 1], rendered as for training (module docstring)."""
    from posescene.data.render import map_tensor, render_lattice

    maps = []
    for pose in poses:
        array = render_lattice(pose.x_norm, pose.y_norm, pose.side, radius=radius, limbs=limbs)
        t = map_tensor(array, resolution)
        maps.append(t)
    return prepare_adapter_input(torch.stack(maps), in_channels, invert).contiguous()
