"""The Typer application object shared by the per-area command modules in ``posescene.commands``."""

from __future__ import annotations

from typing import NoReturn

import typer

from posescene.errors import PosesceneError

app = typer.Typer(
    help="posescene: scene-stable pose conditioning for Stable Diffusion. One sub-command per stage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def fail(exc: PosesceneError) -> NoReturn:
    """Print a user-facing error (no traceback) and exit with status 2."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)
