"""Complete configurations for tests, built from the project's params.yaml (the one source of defaults).

The schema has no default values (tests/test_one_source.py), so a test that needs a params file or a
library call with the stage's settings takes them from params.yaml and overrides only what it is about.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from posescene.config import PROJECT_PARAMS, default_params


def _dotted(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections and/or dotted keys -> dotted keys (``{"model": {"base": x}}`` -> ``{"model.base": x}``)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_dotted(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def write_params(path: Path, overrides: Mapping[str, Any]) -> Path:
    """params.yaml at ``path``: the project's file with ``overrides`` (nested sections or dotted keys)."""
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    for dotted, value in _dotted(overrides).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]  # a KeyError names a section params.yaml does not have
        if leaf not in node:
            raise KeyError(f"{dotted}: not a key of {PROJECT_PARAMS}")
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stage_options(fn: Callable[..., Any], section: str, **overrides: Any) -> dict[str, Any]:
    """The required keyword-only arguments of library function ``fn`` as params.yaml's ``section`` sets them.

    ``run_poses(manifest, out, **stage_options(run_poses, "poses", batch_size=4), progress=False)``.
    """
    values = getattr(default_params(), section).model_dump()
    names = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    unknown = set(overrides) - set(names)
    if unknown:
        raise TypeError(f"{fn.__name__} has no required keyword argument(s) {sorted(unknown)}")
    return {name: overrides.get(name, values[name]) for name in names}
