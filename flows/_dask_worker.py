"""What runs inside a Dask worker for the poses stage: importable without Prefect.

Kept apart from :mod:`flows._dask` (which imports Prefect for the task run's logger) because a worker
unpickles the plugin by importing its module: with the plugin there, every worker process paid
Prefect's import (seconds) before its first batch.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from posescene.data import poses


class DetectorPlugin(WorkerPlugin):
    """Builds the pose detector once per worker process, when the worker starts or the plugin arrives.

    The detector goes into :func:`posescene.data.poses.get_detector`'s per-process cache under its
    :class:`~posescene.data.poses.DetectorSpec` (the settings), so every batch with the same settings reuses
    it; another spec (a rerun with other thresholds on a long-lived cluster) simply adds one.
    """

    def __init__(self, spec: poses.DetectorSpec) -> None:
        self.spec = spec

    def setup(self, worker: Any) -> None:
        del worker
        poses.get_detector(self.spec)
