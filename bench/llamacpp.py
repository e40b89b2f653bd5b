"""Dense vs 2SSP-pruned GGUF exports in llama.cpp: prompt-processing and generation tokens/s, next to the
parameter ratio.

    .venv/bin/python bench/llamacpp.py            # the benchmark model (models.py FULL) → results/llamacpp-full.json
    .venv/bin/python bench/llamacpp.py --quick    # the quick model → results/llamacpp-quick.json
    .venv/bin/python bench/llamacpp.py --model wide --rounds 7 --prompt 256   # 147 M parameters → llamacpp-wide.json

The model is pruned with 2SSP at 25 / 37.5 / 50 % (stage-1 scores shared), every model (dense included) is
exported with `--export gguf` in the same weight type and run through llama-cpp-python on the same prompt: a
prompt of `--prompt` tokens processed in one batch, then `--generate` more tokens of the same text fed one at a
time with the KV cache (the work of generating them). Rounds are
interleaved (dense, 25 %, 37.5 %, 50 %, dense, …) so background load hits every model alike; the ratios use each
model's best round (its least disturbed one, as bench/run.py does); the medians and the median of each round's
own ratios (`paired_*`) are kept in the JSON too. Needs the `llamacpp` extra.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import SPECS, build_model, calibration_windows, data_dir  # noqa: E402
from run import machine  # noqa: E402

from twossp_core.cli.options import option_value  # noqa: E402
from twossp_core.evaluation.llamacpp import gguf_speed  # noqa: E402
from twossp_core.export.gguf import GGUF_FILE  # noqa: E402
from twossp_core.export.registry import run_export  # noqa: E402
from twossp_core.models.registry import adapter_for  # noqa: E402
from twossp_core.plan.methods import method_config  # noqa: E402
from twossp_core.pruning.base import PruneContext  # noqa: E402
from twossp_core.pruning.registry import method_class  # noqa: E402

SPARSITIES = (0.25, 0.375, 0.5)
RESULTS = Path(__file__).resolve().parent / "results"


def paired(samples: dict[str, dict[str, list[float]]], key: str, metric: str) -> float:
    """Median over rounds of the model's speed divided by the dense model's speed in the same round."""
    return statistics.median(m / d for m, d in zip(samples[key][metric], samples["dense"][metric], strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick model (same as --model quick)")
    parser.add_argument("--model", choices=sorted(SPECS), default="full", help="the benchmark model (models.py)")
    parser.add_argument("--type", default="f16", choices=["f32", "f16", "bf16", "q8_0"], help="GGUF weight type")
    parser.add_argument("--ffn-multiple", type=int, default=None,
                        help="pad FFN widths to a multiple of this (the export's ffn_multiple; default: the export's)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens processed in one batch")
    parser.add_argument("--generate", type=int, default=64, help="tokens generated one at a time")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a 2SSP option, e.g. round_to=32 (repeatable)")
    parser.add_argument("--name", help="results file name suffix (default: the model's name)")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    spec = SPECS["quick" if args.quick else args.model]
    options = dict(option_value(text) for text in args.option)
    export_options: dict[str, Any] = {"type": args.type}
    if args.ffn_multiple is not None:
        export_options["ffn_multiple"] = args.ffn_multiple
    base = build_model(spec)
    tokenizer = AutoTokenizer.from_pretrained(data_dir() / "models" / spec.tokenizer)
    calibration = calibration_windows(spec, spec.calibration_windows)
    tokens = calibration.flatten().tolist()
    prompt, continuation = tokens[: args.prompt], tokens[args.prompt : args.prompt + args.generate]
    models: dict[str, Any] = {"dense": base}
    cache: dict[str, Any] = {}
    for s in SPARSITIES:
        model = copy.deepcopy(base)
        ctx = PruneContext(adapter=adapter_for(model), calibration=calibration, cache=cache)
        method_class("2ssp")(method_config("2ssp", options)).prune(ctx, s)
        models[str(s)] = model
        print(f"pruned at {s}", file=sys.stderr)
    params = {k: adapter_for(m).total_params() for k, m in models.items()}
    samples: dict[str, dict[str, list[float]]] = {k: {"pp": [], "tg": []} for k in models}
    files: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for key, model in models.items():
            out = Path(tmp) / key
            files[key] = run_export("gguf", model, tokenizer, out, {"method": "2ssp", "model": spec.name},
                                    export_options)
            paths[key] = out / GGUF_FILE
            files[key]["bytes"] = paths[key].stat().st_size
        for r in range(args.rounds):
            for key, path in paths.items():
                speed = gguf_speed(path, prompt, continuation, threads=args.threads, repeats=1)
                samples[key]["pp"].append(speed["prompt_tokens_per_s"])
                samples[key]["tg"].append(speed["generation_tokens_per_s"])
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    median = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in samples.items()}
    best = {k: {m: max(v) for m, v in d.items()} for k, d in samples.items()}
    result: dict[str, Any] = {
        "machine": machine(args.threads),
        "model": spec.describe(),
        "gguf_type": args.type,
        "export_options": export_options,
        "options": options,
        "threads": args.threads,
        "prompt_tokens": len(prompt),
        "generated_tokens": args.generate,
        "rounds": args.rounds,
        "total_params": params,
        "gguf": files,
        "samples_tokens_per_s": samples,
        "best_tokens_per_s": best,
        "median_tokens_per_s": median,
        "sparsity": {},
    }
    for s in SPARSITIES:
        key = str(s)
        param_ratio = params["dense"] / params[key]
        pp = best[key]["pp"] / best["dense"]["pp"]
        tg = best[key]["tg"] / best["dense"]["tg"]
        result["sparsity"][key] = {
            "architecture": files[key]["architecture"],
            "param_ratio": param_ratio,
            "prompt_speedup": pp,
            "generation_speedup": tg,
            "prompt_vs_param_ratio": pp / param_ratio,
            "generation_vs_param_ratio": tg / param_ratio,
            "median_prompt_speedup": median[key]["pp"] / median["dense"]["pp"],
            "median_generation_speedup": median[key]["tg"] / median["dense"]["tg"],
            # each round measures every model back to back: the median of the rounds' own ratios cancels the
            # machine's slower and faster stretches that the ratio of separate medians or maxima keeps
            "paired_prompt_speedup": paired(samples, key, "pp"),
            "paired_generation_speedup": paired(samples, key, "tg"),
            "paired_prompt_vs_param_ratio": paired(samples, key, "pp") / param_ratio,
            "paired_generation_vs_param_ratio": paired(samples, key, "tg") / param_ratio,
        }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"llamacpp-{args.name or spec.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'sparsity':>9} {'arch':>6} {'params x':>9} {'pp x':>7} {'tg x':>7} "
          f"{'pp x paired':>12} {'tg x paired':>12}")
    for key, row in result["sparsity"].items():
        print(f"{key:>9} {row['architecture']:>6} {row['param_ratio']:9.2f} {row['prompt_speedup']:7.2f} "
              f"{row['generation_speedup']:7.2f} {row['paired_prompt_speedup']:12.2f} "
              f"{row['paired_generation_speedup']:12.2f}")
    print(f"dense: pp {best['dense']['pp']:.0f} tok/s, tg {best['dense']['tg']:.1f} tok/s; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
