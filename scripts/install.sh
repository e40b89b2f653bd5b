#!/usr/bin/env bash
# Create .venv and install twossp with its test tools. Idempotent: a second run only checks.
# PyTorch is installed first and pinned, so no dependency can pull another (multi-GB) build;
# set TWOSSP_TORCH to choose another build, e.g. TWOSSP_TORCH="torch==2.13.0+cu128".
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "installing ${TWOSSP_TORCH:-torch==2.13.0}"
  "${PIP[@]}" install "${TWOSSP_TORCH:-torch==2.13.0}"
fi
if ! .venv/bin/python -c "import twossp_core, service, api, worker, server, moto, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.twossp-installed ]; then
  echo "installing twossp and test dependencies"
  "${PIP[@]}" install -e ".[dev]"
  touch .venv/.twossp-installed
fi
