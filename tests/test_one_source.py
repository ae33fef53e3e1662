"""One source of configuration: default values live in params.yaml only (issue 15).

The schema (posescene/config.py) keeps types and ranges but no default, so a key missing from a params file
fails with its dotted path. The AST scan catches the other way a second copy creeps in: a library function,
dataclass field or CLI option whose name is a params key defaulting to that key's params.yaml value (say
``run_poses(beta=0.05)`` or ``typer.Option(120)`` for ``n_scenes``), which would silently drift apart.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from posescene import config
from posescene.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("posescene", "tasks", "flows")  # where code that runs the stages lives

# Schema sections allowed to keep defaults (none: params.yaml holds every value).
SECTIONS_WITH_DEFAULTS: frozenset[str] = frozenset()

# (file, argument) defaults allowed to equal a params.yaml value, each with its reason (none: every library
# function takes such a value from Params or as a required argument). The scan fails on any copy not listed.
KNOWN_COPIES: dict[tuple[str, str], str] = {}

_NOT_LITERAL = object()


def _params_values(node: Any, out: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Every leaf key of params.yaml -> its values (a key may appear in several sections)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict):
                _params_values(value, out)
            else:
                out.setdefault(str(key), []).append(value)
    return out


def _literal(node: ast.expr | None) -> Any:
    """The value of a literal default; ``typer.Option(<literal>, ...)`` counts as its literal."""
    if node is None:
        return _NOT_LITERAL
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("Option", "Field"):
        node = node.args[0] if node.args else None
        if node is None:
            return _NOT_LITERAL
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


def _same(a: Any, b: Any) -> bool:
    # bool is an int in Python: True must not match a params value 1 (nor False a 0)
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _defaults(tree: ast.AST) -> Iterator[tuple[int, str, Any]]:
    """(line, name, literal value) of every argument default and class-level annotated default."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = args.posonlyargs + args.args
            for arg, default in zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True):
                yield default.lineno, arg.arg, _literal(default)
            for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
                if default is not None:
                    yield default.lineno, arg.arg, _literal(default)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    yield stmt.lineno, stmt.target.id, _literal(stmt.value)


def second_copies(source: str, params_values: dict[str, list[Any]], filename: str = "<source>") -> list[str]:
    """``"line: name = value"`` for each default in ``source`` that copies params.yaml's value of ``name``."""
    found = []
    for line, name, value in _defaults(ast.parse(source, filename=filename)):
        if value is _NOT_LITERAL or value is None or name not in params_values:
            continue  # None is "not given", not a copied value
        if any(_same(value, v) for v in params_values[name]):
            found.append(f"{line}: {name} = {value!r}")
    return found


def _project_values() -> dict[str, list[Any]]:
    return _params_values(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), {})


def test_the_scan_finds_a_copied_default() -> None:
    values = {"beta": [0.05], "n_scenes": [120], "limbs": [False], "radius": [1]}
    source = (
        "import typer\n"
        "def run_poses(manifest, *, beta: float = 0.05, radius: int = 0): ...\n"
        "def synth(n_scenes: int = typer.Option(120, help='x')): ...\n"
        "class Spec:\n"
        "    limbs: bool = False\n"
        "    radius: int = 1\n"
        "def fine(beta: float, other: float = 0.05, limbs: int = 0): ...\n"
    )
    assert second_copies(source, values) == ["2: beta = 0.05", "3: n_scenes = 120", "5: limbs = False", "6: radius = 1"]


def _sources() -> Iterator[Path]:
    for top in SCANNED:
        yield from sorted((REPO_ROOT / top).rglob("*.py"))


def test_no_code_copies_a_params_default() -> None:
    values = _project_values()
    found = []
    for path in _sources():
        rel = path.relative_to(REPO_ROOT)
        if rel == Path("posescene/config.py"):
            continue  # the schema itself: checked field by field below
        for hit in second_copies(path.read_text(), values, str(rel)):
            name = hit.split(": ", 1)[1].split(" = ", 1)[0]
            if (rel.as_posix(), name) not in KNOWN_COPIES:
                found.append(f"{rel}:{hit}")
    assert not found, (
        "defaults copied from params.yaml (take the value from Params, or make the argument required):\n  "
        + "\n  ".join(found)
    )


def _sections(model: type[BaseModel] = config.Params, path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    yield path or "<top>", model
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _sections(annotation, f"{path}.{name}" if path else name)


def test_the_schema_has_no_default_values() -> None:
    with_defaults = [
        f"{path}.{name}" if path != "<top>" else name
        for path, model in _sections()
        if model.__name__ not in SECTIONS_WITH_DEFAULTS
        for name, field in model.model_fields.items()
        if not field.is_required()
    ]
    assert not with_defaults, f"posescene/config.py fields with a default (params.yaml holds it): {with_defaults}"


def test_params_yaml_sets_every_key_and_a_missing_one_is_named(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert config.parse_params(raw) == config.default_params()
    del raw["poses"]["beta"]
    with pytest.raises(ConfigError, match=r"poses\.beta: missing"):
        config.parse_params(raw)
    override = config.default_params({"poses.beta": 0.1})
    assert override.poses.beta == 0.1 and override.synth == config.default_params().synth
