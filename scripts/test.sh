#!/usr/bin/env bash
# Sets up, lints and runs the test suite. .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_plots_browser.py opens `dvc plots show` output in a real browser (Debian's chromium) and
# fails without one; install it here when running as root on Debian (CI), unless skipped on a dev machine.
if ! command -v chromium >/dev/null 2>&1 && { [ -n "${CI:-}" ] || [ "${POSESCENE_BROWSER_TESTS:-1}" != 0 ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "posescene: installing chromium (apt-get) for the offline plot test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "posescene: chromium missing and not root: install it (apt-get install chromium)" \
      "or set POSESCENE_BROWSER_TESTS=0 to skip tests/test_plots_browser.py" >&2
  fi
fi
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
