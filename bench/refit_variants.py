"""Perplexity of 2ssp-refit option variants (and of other methods beside them) on a real model
(docs/methods.md's tables).

    python bench/refit_variants.py c4llama-8l 0.375,0.5 '[{}, {"stage2_on_refit": true}, {"ridge": 0.01}]'
    python bench/refit_variants.py stories260k 0.25 '[{"refit_inputs": "dense"}]'
    python bench/refit_variants.py --held-out c4llama-8l 0.25,0.375 '[["2ssp", {}], {}, {"selection": "norm"}]'
    python bench/refit_variants.py --held-out "$(bash scripts/smollm2.sh | tail -1)" 0.25 '[{}]'

A variant is a 2ssp-refit options object, or a [method, options] pair for any registered method. The README
protocols (default): calibration and evaluation on one source (stories260k: TinyStories [0, 500) / [500, 1000);
c4llama-8l: C4 rows [0, 1000) / [1000, 1200)). `--held-out`: calibration on C4 rows [0, 1000), evaluation on three
sets the model was not calibrated on (C4 rows [1000, 2000), WikiText-2 test, PTB test), `--eval-windows` (20) of
512 tokens each; the MODEL is c4llama-8l or a model directory (SmolLM2-135M-Instruct: scripts/smollm2.sh). Always
32 calibration windows of 512 tokens, seed 0, CPU, one torch thread.

Prints one JSON line per (sparsity, variant): perplexity per set, the held-out summary (geometric mean over the
held-out sets of pruned / dense perplexity), achieved sparsity, removed attention, K, prune seconds. `--out FILE`
also appends the lines to FILE. The model and data are loaded once; the stage-1 scores are shared between the runs
(as in a sweep).

    python bench/refit_variants.py --table bench/results/refit-held-out-c4llama-8l.jsonl

prints such lines (held-out protocol) as docs/methods.md's Markdown table: one row per variant, per sparsity the
three perplexities and the summary (the best summary of each sparsity in bold), with the attention modules removed
where they differ from 2ssp's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from twossp_core.example_data import example_data_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twossp_core.pipeline import measure_pruned, prepare, prune_model  # noqa: E402
from twossp_core.plan.methods import method_config  # noqa: E402
from twossp_core.plan.spec import PruneSpec  # noqa: E402
from twossp_core.progress import Reporter  # noqa: E402

HELD_OUT_EVAL_WINDOWS = 20


def data_dir() -> Path:
    return example_data_dir(REPO, "TWOSSP_TEST_DATA")


def protocol(name: str) -> dict[str, object]:
    """The README protocol of a shared model: calibration and evaluation on one source."""
    data = data_dir()
    if name == "stories260k":
        text = data / "text" / "tinystories-val-1000.txt"
        return {"model": str(data / "models" / name), "calibration": [f"{text}:0:500"], "eval": [f"{text}:500:1000"],
                "doc_separator": "<|endoftext|>"}
    if name == "c4llama-8l":
        text = data / "text" / "c4-validation-2k.jsonl"
        return {"model": str(data / "models" / name), "calibration": [f"{text}:0:1000"],
                "eval": [f"{text}:1000:1200"]}
    raise SystemExit(f"unknown model {name!r}: stories260k or c4llama-8l")


def held_out_protocol(model: str) -> dict[str, object]:
    """Calibration on C4 rows [0, 1000); evaluation on C4 rows [1000, 2000), WikiText-2 test and PTB test."""
    data = data_dir()
    c4 = data / "text" / "c4-validation-2k.jsonl"
    path = model if Path(model).exists() else str(data / "models" / model)
    text = data / "text"
    return {"model": path, "calibration": [f"{c4}:0:1000"],
            "eval": [f"{c4}:1000:2000", str(text / "wikitext2-raw-test.txt"), str(text / "ptb.test.txt")]}


def variants_of(text: str) -> list[tuple[str, dict[str, Any]]]:
    parsed = json.loads(text)
    return [("2ssp-refit", v) if isinstance(v, dict) else (str(v[0]), dict(v[1])) for v in parsed]


def label(method: str, options: dict[str, Any]) -> str:
    if method != "2ssp-refit":
        return method
    if not options:
        return "**2ssp-refit (default)**"
    return "2ssp-refit " + " ".join(f"`{k}={json.dumps(v).strip(chr(34))}`" for k, v in options.items())


def table(lines: list[dict[str, Any]]) -> str:
    """The Markdown table of held-out lines: rows in first-seen order, one column group per sparsity."""
    sparsities = sorted({line["sparsity"] for line in lines})
    rows: dict[tuple[str, str], dict[float, dict[str, Any]]] = {}
    for line in lines:
        key = (line["method"], json.dumps(line["options"], sort_keys=True))
        rows.setdefault(key, {})[line["sparsity"]] = line
    best = {s: min(line["held_out_ratio"] for line in lines if line["sparsity"] == s) for s in sparsities}
    plain = {line["sparsity"]: line for line in lines if line["method"] == "2ssp"}
    first = lines[0]
    dense = " / ".join(f"{v['dense']:.2f}" for v in first["sets"].values())
    out = ["| variant | " + " | ".join(f"{s * 100:g} %: C4 / WikiText-2 / PTB | held-out ×" for s in sparsities) + " |",
           "|" + "---|" * (1 + 2 * len(sparsities)),
           "| dense | " + " | ".join(f"{dense} | 1.000" for _ in sparsities) + " |"]
    for (method, options), cells in rows.items():
        parts = []
        for s in sparsities:
            line = cells.get(s)
            if line is None:
                parts += ["—", "—"]
                continue
            ppl = " / ".join(f"{v['pruned']:.2f}" for v in line["sets"].values())
            removed = []
            if line["removed_blocks"]:
                removed.append(f"blocks {line['removed_blocks']}")
            if line["removed_mlp"]:
                removed.append(f"FFN {line['removed_mlp']}")
            base = plain.get(s)
            if line["removed_attention"] and (method != "2ssp-refit" or base is None
                                              or line["removed_attention"] != base["removed_attention"]):
                removed.append(f"attention {line['removed_attention']}")
            if abs(line["achieved"] - s) > 0.01:
                removed.append(f"{line['achieved']:.1%} achieved")
            ratio = f"{line['held_out_ratio']:.3f}"
            ratio = f"**{ratio}**" if line["held_out_ratio"] == best[s] else ratio
            parts += [ppl + (f" ({'; '.join(removed)})" if removed else ""), ratio]
        out.append(f"| {label(method, json.loads(options))} | " + " | ".join(parts) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--table"] and len(argv) == 2:
        print(table([json.loads(x) for x in Path(argv[1]).read_text().splitlines() if x.strip()]), end="")
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("sparsities")
    parser.add_argument("variants")
    parser.add_argument("--held-out", action="store_true", help="calibrate on C4, evaluate on three held-out sets")
    parser.add_argument("--eval-windows", type=int, default=None,
                        help=f"evaluation windows per set (held-out default {HELD_OUT_EVAL_WINDOWS}; else all)")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    sparsities = [float(x) for x in args.sparsities.split(",")]
    variants = variants_of(args.variants)
    torch.set_num_threads(1)
    source = held_out_protocol(args.model) if args.held_out else protocol(args.model)
    eval_windows = args.eval_windows or (HELD_OUT_EVAL_WINDOWS if args.held_out else None)
    spec = PruneSpec(**source, sparsity=sparsities[0], seq_len=512, calibration_windows=32, eval_windows=eval_windows,
                     measure_throughput=False, device="cpu", seed=0)
    ws = prepare(spec, Reporter())
    for sparsity in sparsities:
        for method, options in variants:
            config = method_config(method, options)
            model, outcome, prune_s = prune_model(ws, method, sparsity, config, Reporter(), copy_model=True)
            report = measure_pruned(ws, model, method, sparsity, config, outcome, prune_s, Reporter())
            rows = report["perplexity"]
            line = {
                "model": args.model, "sparsity": sparsity, "method": method, "options": options,
                "perplexity": rows[0]["pruned"] if not args.held_out else None,
                "sets": {r["dataset"]: {"dense": r["dense"], "pruned": r["pruned"], "domain": r.get("domain")}
                         for r in rows},
                "held_out_ratio": (report.get("held_out") or {}).get("ratio"),
                "achieved": report["sparsity_achieved"], "removed_attention": report["removed_attention"],
                "removed_mlp": report["removed_mlp"], "removed_blocks": report["removed_blocks"],
                "kept_ffn_neurons": report["kept_ffn_neurons"], "prune_s": prune_s,
                "timings": {k: v for k, v in report["timings"].items() if k.endswith("_s")},
                "eval_windows": eval_windows, "threads": torch.get_num_threads(),
            }
            print(json.dumps(line), flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
            del model
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
