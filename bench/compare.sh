#!/usr/bin/env bash
# Every registered method (`--methods all`: 2ssp, 2ssp-refit, shortgpt, window, blockpruner, slicegpt, evopress)
# at 25 / 37.5 / 50 % on the real models; each comparison is one `twossp sweep` command. Every method is judged on
# three held-out sets: its calibration source's unused documents (in-domain), WikiText-2 test and PTB test
# (out-of-domain); the comparison's headline is the held-out summary (geometric mean of pruned/dense perplexity).
# Usage: bench/compare.sh [stories260k|c4llama-8l|smollm2|all] [heal|no-heal] [more twossp sweep options]
# `heal` heals every pruned model with the default heal (`--heal kd`: the same budget for every method) and
# writes the pruned and healed perplexities to bench/results/comparison-<model>-healed/ instead.
# smollm2 is SmolLM2-135M-Instruct from its package (scripts/smollm2.sh writes it once); `all` is the two small
# models. More options come last, so they win: `--methods 2ssp-refit --out DIR2` re-runs one method elsewhere.
# Data: $TWOSSP_TEST_DATA (default ../shared/data). Results: bench/results/comparison-<model>/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${TWOSSP_TEST_DATA:-../shared/data}"
TWOSSP="${TWOSSP:-.venv/bin/twossp}"
which="${1:-all}"
heal=()
suffix=""
if [[ "${2:-}" == "heal" ]]; then
  heal=(--heal kd)
  suffix="-healed"
fi
extra=("${@:3}")
held_out=("$DATA/text/wikitext2-raw-test.txt" "$DATA/text/ptb.test.txt")

if [[ "$which" == "stories260k" || "$which" == "all" ]]; then
  "$TWOSSP" sweep --model "$DATA/models/stories260k" --methods all --sparsities 0.25,0.375,0.5 \
    --calibration "$DATA/text/tinystories-val-1000.txt:0:500" \
    --eval "$DATA/text/tinystories-val-1000.txt:500:1000" "${held_out[@]}" --eval-windows 40 \
    --doc-separator '<|endoftext|>' --seq-len 512 --calibration-windows 32 \
    --out "bench/results/comparison-stories260k$suffix" --overwrite --no-progress "${heal[@]}" "${extra[@]}"
fi

if [[ "$which" == "c4llama-8l" || "$which" == "all" ]]; then
  "$TWOSSP" sweep --model "$DATA/models/c4llama-8l" --methods all --sparsities 0.25,0.375,0.5 \
    --calibration "$DATA/text/c4-validation-2k.jsonl:0:1000" \
    --eval "$DATA/text/c4-validation-2k.jsonl:1000:2000" "${held_out[@]}" --eval-windows 40 \
    --seq-len 512 --calibration-windows 32 \
    --out "bench/results/comparison-c4llama-8l$suffix" --overwrite --no-progress "${heal[@]}" "${extra[@]}"
fi

if [[ "$which" == "smollm2" ]]; then
  # EvoPress with a CPU budget (the authors' defaults would take days on 2 cores at 135 M parameters): 16 random
  # candidates on one window for the first parent, 12 generations of 16 offspring, selection on 1 then 4 windows.
  # Throughput is not measured (the machine is shared). The committed results were made as two such commands run
  # side by side, `--methods 2ssp,shortgpt,window,slicegpt,2ssp-refit` and `--methods blockpruner,evopress --out
  # bench/results/comparison-smollm2-search`, each on one thread; bench/held_out_table.py merges the two.
  model="$(bash scripts/smollm2.sh | tail -n 1)"
  "$TWOSSP" sweep --model "$model" --methods all --sparsities 0.25,0.375,0.5 \
    --calibration "$DATA/text/c4-validation-2k.jsonl:0:1000" \
    --eval "$DATA/text/c4-validation-2k.jsonl:1000:2000" "${held_out[@]}" --eval-windows 10 \
    --seq-len 512 --calibration-windows 32 --no-throughput \
    --option evopress.initial_candidates=16 --option evopress.initial_tokens=512 --option evopress.offspring=16 \
    --option 'evopress.selection_tokens=[512,2048]' --option 'evopress.selection_survivors=[2,1]' \
    --option evopress.generations=12 \
    --out "bench/results/comparison-smollm2$suffix" --overwrite --no-progress "${heal[@]}" "${extra[@]}"
fi
