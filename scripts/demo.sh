#!/usr/bin/env bash
# Quickstart: set up, then pretrain the default model on the embedded Shakespeare corpus and print samples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gptqwen pretrain "$@"
