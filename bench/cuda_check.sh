#!/usr/bin/env bash
# The product on one CUDA GPU, in one run: a job through the service's worker (bf16, 2ssp-refit, heal), the export
# formats from a CUDA prune, block-by-block against in-memory execution, and the refit's cost at a 7B shape.
# Usage: bench/cuda_check.sh OUTDIR   (data: $TWOSSP_TEST_DATA, default ../shared/data; python: $PYTHON)
# Each step has its own time limit; OUTDIR/summary.txt lists every step's exit code and seconds, OUTDIR/*.log
# their output, OUTDIR/*.json the reports.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bench/cuda_check.sh OUTDIR}"
mkdir -p "$OUT"
DATA="$(cd "${TWOSSP_TEST_DATA:-../shared/data}" && pwd)"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-.venv/bin/python}"
TW=("$PY" -m twossp_core.cli)
C4=(--model "$DATA/models/c4llama-8l" --calibration "$DATA/text/c4-validation-2k.jsonl:0:1000"
    --eval "$DATA/text/c4-validation-2k.jsonl:1000:1200" --seq-len 512 --no-progress --no-throughput)

step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

step environment 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  $PY -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())'"

# a job through the embedded service's worker on the GPU: bf16, 2ssp-refit, default kd heal, download + reload
step service_job 150 "$PY" scripts/quickstart.py --data "$DATA" --workdir "$OUT/service" --method 2ssp-refit \
  --device "$DEVICE" --dtype bfloat16 --heal kd

# exports from a CUDA prune of c4llama-8l (bf16): GGUF (deci graph) and the DeciLM layout, reloaded
step export_gguf 90 "${TW[@]}" prune "${C4[@]}" --sparsity 0.375 --device "$DEVICE" --dtype bfloat16 \
  --export gguf --export-option type=bf16 --out "$OUT/gguf" --json
step export_decilm 90 "${TW[@]}" prune "${C4[@]}" --sparsity 0.375 --option round_to=256 --device "$DEVICE" \
  --dtype bfloat16 --export decilm --out "$OUT/decilm" --json
step reload 60 "$PY" - "$OUT" "$DEVICE" <<'EOF'
import sys
from pathlib import Path

import gguf
import torch
from transformers import AutoModelForCausalLM

out, DEVICE = Path(sys.argv[1]), sys.argv[2]
reader = gguf.GGUFReader(next((out / "gguf").glob("*.gguf")))
arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
print("gguf architecture", arch)
for key in (f"{arch}.feed_forward_length", f"{arch}.attention.head_count"):
    field = reader.fields[key]
    print(key, [int(field.parts[i][0]) for i in field.data])
model = AutoModelForCausalLM.from_pretrained(out / "decilm", trust_remote_code=True, dtype=torch.bfloat16).to(DEVICE)
ids = torch.arange(1, 65, device=DEVICE)[None]
print("decilm", type(model).__name__, "logits finite:", bool(model(ids).logits.isfinite().all()))
EOF

# block-by-block against in-memory on the GPU (fp32): decisions and perplexities must be the same
for mode in in-memory block-by-block; do
  step "execution_$mode" 90 "${TW[@]}" prune "${C4[@]}" --sparsity 0.375 --device "$DEVICE" --execution "$mode" \
    --out "$OUT/$mode" --json
done
step compare_modes 30 "$PY" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
reports = {m: json.loads((out / m / "report.json").read_text()) for m in ("in-memory", "block-by-block")}
keys = ("removed_attention", "removed_mlp", "removed_blocks", "kept_ffn_neurons")
for mode, r in reports.items():
    print(mode, r["memory"]["mode"], {k: r[k] for k in keys}, [(p["dataset"], p["pruned"]) for p in r["perplexity"]],
          "measured", r["memory"]["measured"])
a, b = (reports[m] for m in ("in-memory", "block-by-block"))
assert all(a[k] == b[k] for k in keys), "decisions differ"
print("same decisions")
EOF

# the refit's cost next to stage 1 at Llama-2-7B's block shape, bf16
[ "$DEVICE" = cuda ] && step refit_7b 200 "$PY" bench/refit.py --shape 7b --device "$DEVICE" --dtype bfloat16 --name 7b-cuda-bf16
cp bench/results/refit-7b-cuda-bf16.json "$OUT/" 2>/dev/null
cat "$OUT/summary.txt"
