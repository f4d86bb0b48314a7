#!/usr/bin/env bash
# Set up with the test/reference packages, lint (ruff, configured in pyproject.toml), then run the test suite:
# the fast set by default, everything (slow tests too, ~3 min more) when CI=true or with `-m "slow or not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check src tests bench
# -rs: the closing summary names every skipped test and why (in CI a missing dev dependency fails instead)
if [ "${CI:-}" = "true" ]; then
  exec .venv/bin/python -m pytest -q -rs -m "slow or not slow" "$@"
fi
exec .venv/bin/python -m pytest -q -rs "$@"
