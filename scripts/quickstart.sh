#!/usr/bin/env bash
# Install twossp, then run the main job on the embedded default (no Redis, Postgres or S3 needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh main
exec .venv/bin/python scripts/quickstart.py "$@"
