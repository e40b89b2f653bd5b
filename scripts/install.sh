#!/usr/bin/env bash
# Create .venv and install twossp. Idempotent: a second run only checks.
#
#   bash scripts/install.sh main   what the CLI and the service need (what scripts/quickstart.sh installs)
#   bash scripts/install.sh dev    that, plus the tests', bench/'s and lint's tools: pytest, ruff, moto, playwright,
#                                  schemathesis and llama-cpp-python (the default; scripts/test.sh installs this)
#
# PyTorch is installed first and pinned, so no dependency can pull another (multi-GB) build;
# set TWOSSP_TORCH to choose another build, e.g. TWOSSP_TORCH="torch==2.13.0+cu128".
# pip's full output goes to .venv/pip.log; a package that pip builds from source is said here, with why.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-dev}
case "$MODE" in
  main) TARGET="."; IMPORTS="twossp_core, service, api, worker, server" ;;
  dev) TARGET=".[dev]"; IMPORTS="twossp_core, service, api, worker, server, moto, pytest, playwright, llama_cpp, lm_eval" ;;
  *) echo "usage: $0 [main|dev]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
LOG=.venv/pip.log

# Why a package is built from source here rather than installed from a wheel.
why_from_source() {
  case "$1" in
    twossp) echo "this checkout, installed editable (seconds)" ;;
    llama-cpp-python | llama_cpp_python)
      echo "PyPI has no wheel of it, so pip compiles llama.cpp (C++): 15-20 min on 2 cores, once (pip keeps the" \
        "wheel in its cache). Only the tests and bench/ need it, to run GGUF exports; 'main' does not install it" ;;
    *) echo "the package index has no wheel of it for this Python and platform" ;;
  esac
}

pip_install() {
  echo "pip install $* (log: $LOG)"
  set +e
  .venv/bin/python -m pip --disable-pip-version-check install "$@" 2>&1 | tee -a "$LOG" | while IFS= read -r line; do
    case "$line" in
      *"Building wheel for "*": started"* | *"Building editable for "*": started"*)
        name=${line#*Building wheel for }
        name=${name#*Building editable for }
        name=${name%% *}
        echo "  building $name from source: $(why_from_source "$name")" ;;
      *": still running..."*) echo "  ... still building ${name:-}" ;;
    esac
  done
  local status=${PIPESTATUS[0]}
  set -e
  if [ "$status" != 0 ]; then
    tail -n 40 "$LOG" >&2
    echo "install: pip failed (exit $status); the whole log is $LOG" >&2
    exit "$status"
  fi
}

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip_install "${TWOSSP_TORCH:-torch==2.13.0}"
fi
STAMP=.venv/.twossp-installed-$MODE
if ! .venv/bin/python -c "import $IMPORTS" 2>/dev/null || [ pyproject.toml -nt "$STAMP" ]; then
  pip_install -e "$TARGET"
  touch "$STAMP"
fi
