"""Pruned and healed perplexity of method variants under the default heal, over several heal seeds
(docs/methods.md's "After a heal" table).

    python bench/heal_variants.py stories260k 0.375 '[["2ssp", {}], ["2ssp-refit", {"stage2_windows": 1}]]' 0,1,2
    python bench/heal_variants.py c4llama-8l 0.5 '[["2ssp-refit", {"stage2_on_refit": false}]]' 0

Prints one JSON line per (sparsity, method, options): pruned perplexity, removed attention, K and the healed
perplexity per seed. The model and data are loaded once (README protocols, as `bench/refit_variants.py`); each
seed heals a fresh copy of the same pruned model with the default heal (`--heal kd`).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.refit_variants import protocol  # noqa: E402
from twossp_core.pipeline import heal_pruned, measure_pruned, prepare, prune_model  # noqa: E402
from twossp_core.plan.heal_config import HealConfig  # noqa: E402
from twossp_core.plan.methods import method_config  # noqa: E402
from twossp_core.plan.spec import PruneSpec  # noqa: E402
from twossp_core.progress import Reporter  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        raise SystemExit(__doc__)
    name, sparsities, variants = argv[0], [float(x) for x in argv[1].split(",")], json.loads(argv[2])
    seeds = [int(x) for x in argv[3].split(",")]
    spec = PruneSpec(**protocol(name), sparsity=sparsities[0], seq_len=512, calibration_windows=32,
                     measure_throughput=False, device="cpu", heal=HealConfig())
    ws = prepare(spec, Reporter())
    for sparsity in sparsities:
        for method, options in variants:
            config = method_config(method, options)
            model, outcome, prune_s = prune_model(ws, method, sparsity, config, Reporter(), copy_model=True)
            report = measure_pruned(ws, model, method, sparsity, config, outcome, prune_s, Reporter())
            healed = {}
            for seed in seeds:
                ws.spec = spec.model_copy(update={"heal": HealConfig(seed=seed)})
                start = time.perf_counter()
                student = copy.deepcopy(model)
                _, _ = heal_pruned(ws, student, report, Reporter())
                healed[seed] = {"healed": report["perplexity"][0]["healed"], "seconds": time.perf_counter() - start}
                del student
            print(json.dumps({
                "model": name, "sparsity": sparsity, "method": method, "options": options,
                "pruned": report["perplexity"][0]["pruned"], "achieved": report["sparsity_achieved"],
                "removed_attention": report["removed_attention"], "kept_ffn_neurons": report["kept_ffn_neurons"],
                "healed": healed, "threads": torch.get_num_threads(),
            }), flush=True)
            del model
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
