#!/usr/bin/env bash
# Zero-shot accuracy of SmolLM2-135M-Instruct, dense and pruned at 25 % by every method (docs/methods.md,
# "Zero-shot accuracy on a real model"). Two steps:
#  1. two `twossp sweep --save-models` runs side by side, one torch thread each, with bench/compare.sh's smollm2
#     protocol (calibration C4 rows [0, 1000), 32 windows of 512 tokens; held-out perplexity on 10 windows of C4
#     [1000, 2000), WikiText-2 and PTB; EvoPress with the CPU budget compare.sh states): the fast methods in one,
#     BlockPruner and EvoPress (the long searches) in the other;
#  2. bench/zeroshot_table.py scores the dense model and every saved model on the same items: the first 200 items
#     of WinoGrande, ARC-e, ARC-c, HellaSwag and PIQA and the first 5 of each MMLU subject, two processes at once.
# Usage: bench/zeroshot_smollm2.sh [WORK]   (the sweeps and their saved models; default /tmp/zeroshot-smollm2)
# Results: bench/results/zeroshot-smollm2-25/ (one report per model and task group, table.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${TWOSSP_TEST_DATA:-../shared/data}"
TWOSSP="${TWOSSP:-.venv/bin/twossp}"
WORK="${1:-/tmp/zeroshot-smollm2}"
model="$(bash scripts/smollm2.sh | tail -n 1)"
common=(--model "$model" --sparsities 0.25 --save-models
  --calibration "$DATA/text/c4-validation-2k.jsonl:0:1000"
  --eval "$DATA/text/c4-validation-2k.jsonl:1000:2000" "$DATA/text/wikitext2-raw-test.txt" "$DATA/text/ptb.test.txt"
  --eval-windows 10 --seq-len 512 --calibration-windows 32 --no-throughput --no-progress --overwrite)
evopress=(--option evopress.initial_candidates=16 --option evopress.initial_tokens=512 --option evopress.offspring=16
  --option 'evopress.selection_tokens=[512,2048]' --option 'evopress.selection_survivors=[2,1]'
  --option evopress.generations=12)
mkdir -p "$WORK"
OMP_NUM_THREADS=1 "$TWOSSP" sweep "${common[@]}" --methods 2ssp,2ssp-refit,shortgpt,window,slicegpt \
  --out "$WORK/fast" &
fast=$!
OMP_NUM_THREADS=1 "$TWOSSP" sweep "${common[@]}" --methods blockpruner,evopress "${evopress[@]}" --out "$WORK/search"
wait "$fast"
.venv/bin/python bench/zeroshot_table.py --dense "$model" --sweep "$WORK/fast" --sweep "$WORK/search" \
  --limit 200 --mmlu-limit 5 --jobs 2 --out bench/results/zeroshot-smollm2-25
