"""Perplexity of 2ssp-refit option variants on a real model with the README protocol (docs/methods.md's table).

    python bench/refit_variants.py c4llama-8l 0.375,0.5 '[{}, {"stage2_on_refit": false}, {"ridge": 0.01}]'
    python bench/refit_variants.py stories260k 0.25 '[{"refit_inputs": "dense"}]'

Prints one JSON line per (sparsity, options): perplexity, achieved sparsity, removed attention, K, timings.
The model and data are loaded once; the stage-1 scores are shared between the runs (as in a sweep).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twossp_core.pipeline import measure_pruned, prepare, prune_model  # noqa: E402
from twossp_core.progress import Reporter  # noqa: E402
from twossp_core.spec import PruneSpec  # noqa: E402


def protocol(name: str) -> dict[str, object]:
    data = Path(os.environ.get("TWOSSP_TEST_DATA", REPO.parent / "shared" / "data"))
    if name == "stories260k":
        text = data / "text" / "tinystories-val-1000.txt"
        return {"model": str(data / "models" / name), "calibration": [f"{text}:0:500"], "eval": [f"{text}:500:1000"],
                "doc_separator": "<|endoftext|>"}
    if name == "c4llama-8l":
        text = data / "text" / "c4-validation-2k.jsonl"
        return {"model": str(data / "models" / name), "calibration": [f"{text}:0:1000"],
                "eval": [f"{text}:1000:1200"]}
    raise SystemExit(f"unknown model {name!r}: stories260k or c4llama-8l")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    name, sparsities, variants = argv[0], [float(x) for x in argv[1].split(",")], json.loads(argv[2])
    torch.set_num_threads(1)
    spec = PruneSpec(**protocol(name), sparsity=sparsities[0], seq_len=512, calibration_windows=32,
                     measure_throughput=False, device="cpu")
    ws = prepare(spec, Reporter())
    for sparsity in sparsities:
        for options in variants:
            model, outcome, prune_s = prune_model(ws, "2ssp-refit", sparsity, options, Reporter(), copy_model=True)
            report = measure_pruned(ws, model, "2ssp-refit", sparsity, options, outcome, prune_s, Reporter())
            print(json.dumps({
                "model": name, "sparsity": sparsity, "options": options,
                "perplexity": report["perplexity"][0]["pruned"], "achieved": report["sparsity_achieved"],
                "removed_attention": report["removed_attention"], "kept_ffn_neurons": report["kept_ffn_neurons"],
                "timings": {k: report["timings"][k] for k in ("stage1_s", "refit_s", "stage2_s")},
            }), flush=True)
            del model
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
