"""The faithful 2SSP run on token ids made elsewhere: checks twossp against the reference implementation
(FabrizioSandri/2SSP) on exactly the tokens the reference ran on (docs/models.md, "Checked against the reference
implementation").

    .venv/bin/python bench/reference_tokens.py --model DIR --calibration-ids CAL.pt --eval-ids EVAL.pt \
        [--sparsity 0.25] [--windows 32] [--seq-len 2048] [--out bench/results/reference-tokens.json]

CAL.pt and EVAL.pt are (1, n) int64 tensors saved with `torch.save` from the reference's own environment: the
reference tokenizes with `AutoTokenizer.from_pretrained(MODEL, use_fast=False)` (for SmolLM2 the slow GPT-2
tokenizer, which splits text differently from the model's tokenizer.json: no per-digit split, "\\n\\n" as two tokens
before some characters), so its calibration windows are not the ones `twossp prune` cuts. The reference's
calibration is the first `windows` × `seq_len` tokens of the joined calibration text, its stage 2 ranks on the first
window, and its perplexity is the mean cross-entropy over the evaluation ids' full `seq_len` windows. This script
runs twossp's `2ssp` method (its own stage 1 and stage 2, `round_to=1` as the reference keeps the exact K) on those
windows and prints K, the attention modules removed with stage 2's perplexity after each removal, and the
evaluation perplexity, to compare with the reference's DEBUG log.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from twossp_core.models.registry import adapter_for
from twossp_core.pruning.base import PruneContext
from twossp_core.pruning.twossp.config import TwoSSPConfig
from twossp_core.pruning.twossp.method import TwoSSP
from twossp_core.runtime.loading import load_model

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, seq_len: int) -> float:
    """exp of the mean next-token cross-entropy over the full `seq_len` windows of `ids`, computed as the reference
    computes it (a float32 cross-entropy per window, averaged): twossp's own `evaluation.perplexity` sums the
    windows' NLL in another order and differs in the sixth digit (20.967058 against 20.966883 dense here)."""
    n = ids.numel() // seq_len
    windows = ids.reshape(-1)[: n * seq_len].view(n, seq_len)
    total = 0.0
    for window in windows:
        logits = model(input_ids=window.unsqueeze(0)).logits[0, :-1]
        total += torch.nn.functional.cross_entropy(logits.float(), window[1:]).item()
    return float(torch.tensor(total / n).exp())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration-ids", type=Path, required=True)
    parser.add_argument("--eval-ids", type=Path, required=True)
    parser.add_argument("--sparsity", type=float, default=0.25)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reference-tokens.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, _ = load_model(args.model, dtype="float32")
    calibration_ids = torch.load(args.calibration_ids).reshape(-1)
    needed = args.windows * args.seq_len
    if calibration_ids.numel() < needed:
        raise SystemExit(f"{args.calibration_ids}: {calibration_ids.numel()} ids, fewer than {needed}")
    windows = calibration_ids[:needed].view(args.windows, args.seq_len)
    eval_ids = torch.load(args.eval_ids)
    dense = perplexity(model, eval_ids, args.seq_len)

    method = TwoSSP(TwoSSPConfig(round_to=1))
    start = time.perf_counter()
    outcome = method.prune(PruneContext(adapter=adapter_for(model), calibration=windows), args.sparsity)
    prune_s = time.perf_counter() - start
    result = {
        "model": args.model, "sparsity": args.sparsity, "windows": args.windows, "seq_len": args.seq_len,
        "kept_ffn_neurons": outcome.kept_ffn_neurons,
        "removal_order": outcome.details.get("removal_order"),
        "removal_perplexity": outcome.details.get("removal_perplexity"),
        "removed_attention": outcome.removed_attention,
        "eval_windows": eval_ids.numel() // args.seq_len,
        "perplexity": {"dense": dense, "pruned": perplexity(model, eval_ids, args.seq_len)},
        "timings": {**{k: round(v, 1) for k, v in outcome.timings.items()}, "prune_s": round(prune_s, 1)},
        "threads": args.threads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
