#!/usr/bin/env bash
# Source this to make sure a Prefect API server is reachable: reuses $PREFECT_API_URL or a server on
# 127.0.0.1:$POSESCENE_PREFECT_PORT (default 4200), else starts one in the background and stops it when
# the calling shell exits. Without it every flow run would start (and pay ~10 s for) a temporary server.
port="${POSESCENE_PREFECT_PORT:-4200}"
_ps_healthy() { .venv/bin/python - "$1" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/health", timeout=2)
except Exception:
    sys.exit(1)
PY
}
if [ -z "${PREFECT_API_URL:-}" ]; then
  url="http://127.0.0.1:${port}/api"
  if ! _ps_healthy "$url"; then
    mkdir -p build
    setsid .venv/bin/prefect server start --host 127.0.0.1 --port "$port" > build/prefect-server.log 2>&1 &
    _ps_pid=$!
    trap 'kill -- -"$_ps_pid" 2>/dev/null || true' EXIT
    # ~10 s on an idle 2-core machine; allow up to 5 minutes on a loaded one
    for _ in $(seq 300); do _ps_healthy "$url" && break; sleep 1; done
    _ps_healthy "$url" || { echo "Prefect server did not start; see build/prefect-server.log" >&2; exit 1; }
    echo "posescene: started a local Prefect server at http://127.0.0.1:${port} (UI) for this run"
  fi
  export PREFECT_API_URL="$url"
fi
# The run lock's Prefect slot (ops.concurrency_limit, docs/operations.md): created here as `posescene serve`
# does, so that every stage of the run occupies it instead of skipping it with a warning.
# A server started here has no live slot holders: slots its database still counts were leaked (fresh_server).
POSESCENE_FRESH_SERVER=$([ -n "${_ps_pid:-}" ] && echo 1 || echo 0) \
.venv/bin/python -c 'import os; from flows.deployments import ensure_concurrency_limit; from posescene.config import load_params
ensure_concurrency_limit(load_params("params.yaml").ops.concurrency_limit, fresh_server=os.environ["POSESCENE_FRESH_SERVER"] == "1")' \
  || echo "posescene: could not create the Prefect concurrency limit; runs rely on the file lock alone" >&2
