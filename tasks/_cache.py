"""Cache keys for stage tasks: the task's inputs *and* the state of the files it reads and writes.

Keying on parameters alone would skip a task whose output was deleted; including a fingerprint of the
input and output paths (size + mtime, recursively) makes a cache hit mean "same inputs, output intact".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext


def path_fingerprint(path: str | Path) -> str:
    path = Path(path)
    h = hashlib.sha256()
    if not path.exists():
        return "missing"
    entries = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in entries:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def stage_cache_key(paths_params: tuple[str, ...]) -> Any:
    """Build a ``cache_key_fn`` that fingerprints the path-valued parameters named in ``paths_params``."""

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        h = hashlib.sha256()
        h.update(context.task.name.encode())
        h.update(json.dumps(parameters, sort_keys=True, default=str).encode())
        for name in paths_params:
            value = parameters.get(name)
            for p in value if isinstance(value, list | tuple) else [value]:
                if p is not None:
                    h.update(path_fingerprint(os.fspath(p)).encode())
        return h.hexdigest()

    return key
