"""The ``posescene`` console command: one sub-command per stage, calling the library directly.

Prefect flows (``flows/``) and ``dvc repro`` run the same library functions; the CLI is for running a
single stage by hand on your own paths. Sub-commands live in ``posescene/commands/<area>.py``.
Orchestration commands (``serve``, ``lock-status``) are added by ``flows/cli.py``, which is what the
installed ``posescene`` console script runs; this module imports no Prefect, ``flows`` or ``tasks``.
"""

from __future__ import annotations

from posescene.cli_app import app
from posescene.commands import data, evaluation, training, world  # noqa: F401  (registers commands)

__all__ = ["app"]

if __name__ == "__main__":  # pragma: no cover
    app(prog_name="posescene")
