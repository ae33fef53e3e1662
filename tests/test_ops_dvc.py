"""DVC with a local directory remote, for real: repro -> push -> lose cache and output -> pull -> same bytes.

A throw-away git + DVC project in tmp (not this checkout): one stage that writes a small directory output,
the remote a plain directory (as ``dvc-remote/`` is for this project until a cloud remote is configured).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DVC = Path(sys.executable).parent / "dvc"

STAGE = """\
import json, pathlib, random, sys
out = pathlib.Path("out")
out.mkdir(exist_ok=True)
rng = random.Random(int(sys.argv[1]))
(out / "table.json").write_text(json.dumps([rng.random() for _ in range(50)]))
(out / "blob.bin").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
"""


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.mark.e2e
@pytest.mark.skipif(not DVC.exists(), reason="dvc is not installed in the venv")
def test_push_then_pull_restores_identical_bytes(tmp_path: Path) -> None:
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run([str(DVC), "init", "-q"], repo)
    _run([str(DVC), "config", "core.autostage", "true"], repo)
    _run([str(DVC), "remote", "add", "-d", "local", str(remote)], repo)
    (repo / "make_out.py").write_text(STAGE)
    _run([str(DVC), "stage", "add", "-q", "-n", "make", "-d", "make_out.py", "-o", "out", "python make_out.py 7"], repo)
    _run([str(DVC), "repro", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-q", "-m", "tiny pipeline"], repo)
    before = _digest(repo / "out")
    assert set(before) == {"table.json", "blob.bin"}

    _run([str(DVC), "push"], repo)
    assert any(p.is_file() for p in remote.rglob("*")), "nothing reached the remote"
    assert json.loads(_run([str(DVC), "status", "--cloud", "--json"], repo)) == {}  # cache and remote in sync

    # Lose everything local: the output and the whole cache.
    shutil.rmtree(repo / "out")
    shutil.rmtree(repo / ".dvc" / "cache")
    assert json.loads(_run([str(DVC), "status", "--json"], repo)) != {}  # dvc notices the missing output

    _run([str(DVC), "pull"], repo)
    assert _digest(repo / "out") == before
    assert json.loads(_run([str(DVC), "status", "--json"], repo)) == {}  # dvc.lock agrees with the restored output
