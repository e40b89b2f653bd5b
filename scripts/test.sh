#!/usr/bin/env bash
# Install what is missing, make sure PostgreSQL and Redis are up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
bash scripts/services.sh
exec .venv/bin/python -m pytest "$@"
