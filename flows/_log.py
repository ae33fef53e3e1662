"""The logger flows write to: Prefect's run logger inside a run (it shows in the UI), a plain one elsewhere."""

from __future__ import annotations

import logging


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a flow/task run, ``posescene.ops`` outside one (tests, the CLI)."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run context Prefect raises MissingContextError
        return logging.getLogger("posescene.ops")
