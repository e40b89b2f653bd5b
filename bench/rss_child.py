"""Child process of the memory measurement: build the model, prune it in place with 2SSP, report RSS.

Run by `bench/run.py` as `python bench/rss_child.py MODEL WINDOWS.pt SPARSITY`; prints one JSON line.
The baseline is the RSS after importing torch, transformers and twossp_core, loading the (small) token
windows and pruning a throw-away 2-block model of the same family (which loads the code and kernels that
are imported or initialised lazily), before the benchmark model exists. The peak is a 1 ms psutil poll during
the prune; `ru_maxrss` is reported too, but on Linux it carries over the RSS the parent had at fork time.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
import transformers  # noqa: F401 - part of the baseline

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import SPECS, BenchModel, build_model  # noqa: E402

from twossp_core.models.registry import adapter_for  # noqa: E402
from twossp_core.plan.methods import method_config  # noqa: E402
from twossp_core.pruning.base import PruneContext  # noqa: E402
from twossp_core.pruning.registry import method_class  # noqa: E402


def main() -> None:
    spec = SPECS[sys.argv[1]]
    windows = torch.load(sys.argv[2])
    sparsity = float(sys.argv[3])
    proc = psutil.Process()
    warm = BenchModel("warm-up", layers=2, hidden=32, intermediate=64, heads=2, kv_heads=1, seq_len=16,
                      calibration_windows=2, vocab=spec.vocab)
    warm_ctx = PruneContext(adapter=adapter_for(build_model(warm)), calibration=windows[:2, :16].clone())
    method_class("2ssp")(method_config("2ssp", {})).prune(warm_ctx, sparsity)
    del warm_ctx
    gc.collect()
    baseline = proc.memory_info().rss
    model = build_model(spec)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    after_build = proc.memory_info().rss

    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = [after_build]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    ctx = PruneContext(adapter=adapter_for(model), calibration=windows)
    t0 = time.perf_counter()
    method_class("2ssp")(method_config("2ssp", {})).prune(ctx, sparsity)
    elapsed = time.perf_counter() - t0
    stop.set()
    poller.join()
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({
        "baseline_rss_bytes": baseline,
        "after_build_rss_bytes": after_build,
        "poll_peak_rss_bytes": peak[0],
        "ru_maxrss_bytes": ru_maxrss,
        "ru_maxrss_before_prune_bytes": ru_before,
        "weights_bytes": weights,
        "prune_s": elapsed,
    }))


if __name__ == "__main__":
    main()
