#!/usr/bin/env bash
# Sets up posescene on a fresh machine: a virtualenv at .venv/ with the pinned stack, the project
# installed in editable mode, DVC initialised and the local DVC remote configured. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the lock changed since the last successful install.
stamp=.venv/.posescene-lock.sha256
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi

if [ ! -d .git ]; then
  git init --quiet
fi
if [ ! -d .dvc ]; then
  .venv/bin/dvc init --quiet
fi
.venv/bin/dvc config core.analytics false
# A local DVC remote (a directory beside the data); `dvc push`/`dvc pull` use it by default.
mkdir -p dvc-remote
.venv/bin/dvc remote add --local --force --default localremote "$(pwd)/dvc-remote" >/dev/null
echo "posescene: environment ready (.venv)"
