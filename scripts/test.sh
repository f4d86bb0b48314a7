#!/usr/bin/env bash
# Set up with the test/reference packages, lint (ruff, configured in pyproject.toml), then run the test suite:
# the fast set by default, everything (slow tests too, ~3 min more) when CI=true or with `-m "slow or not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check src tests bench
# the oldest transformers exports are checked against (Qwen3's first release), beside the venv's own; a few seconds
OLDER=.venv/older-transformers
if [ ! -d "$OLDER/transformers" ]; then
  .venv/bin/pip install -q --target "$OLDER" --no-deps transformers==4.51.3 huggingface_hub==0.30.2 tokenizers==0.21.1 \
    2>&1 | { grep -v "^WARNING: Location '" || true; }
fi
export GPTQWEN_OLDER_TRANSFORMERS="$PWD/$OLDER"
# -rs: the closing summary names every skipped test and why (in CI a missing dev dependency fails instead)
if [ "${CI:-}" = "true" ]; then
  exec .venv/bin/python -m pytest -q -rs -m "slow or not slow" "$@"
fi
exec .venv/bin/python -m pytest -q -rs "$@"
