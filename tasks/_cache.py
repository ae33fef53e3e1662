"""Cache keys for stage tasks: the task's inputs *and* the state of the files it reads and writes.

Keying on parameters alone would skip a task whose output was deleted; including a fingerprint of the
input and output paths (size + mtime, recursively) makes a cache hit mean "same inputs, output intact".
A path that does not exist never gives a hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
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
                if p is None:
                    continue
                fingerprint = path_fingerprint(os.fspath(p))
                if fingerprint == "missing":
                    # Nothing on disk can be a cache hit: a fresh clone (or a deleted output) with the same
                    # params as an earlier run elsewhere would otherwise skip the work and write nothing.
                    return f"missing-{uuid.uuid4().hex}"
                # absolute: two checkouts with the same relative paths are different outputs
                h.update(f"{Path(p).resolve()}:{fingerprint}".encode())
        return h.hexdigest()

    return key


def params_cache_key(values: tuple[str, ...], paths: tuple[str, ...]) -> Any:
    """A ``cache_key_fn`` for a task called with the whole ``params``: the values of the dotted ``params.yaml`` keys
    ``values`` and ``paths``, and the fingerprints of the files the ``paths`` keys name (:func:`stage_cache_key`)."""
    by_paths = stage_cache_key(paths)

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        params = parameters["params"]
        chosen = {name: _dotted(params, name) for name in (*values, *paths)}
        return by_paths(context, {**chosen, **{k: v for k, v in parameters.items() if k != "params"}})

    return key


def _dotted(params: Any, name: str) -> Any:
    value = params
    for part in name.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value
