"""`twossp sweep`: methods x sparsities on one model, written as a comparison."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from twossp_core.cli.options import (
    add_data_arguments,
    add_export_argument,
    add_heal_arguments,
    add_out_arguments,
    add_task_arguments,
    job_fields,
    option_value,
)
from twossp_core.cli.running import run_into_out_dir
from twossp_core.errors import InvalidSpec
from twossp_core.plan.spec import SweepSpec, parse_sweep_spec


def _method_option(text: str) -> tuple[str, str, Any]:
    key, value = option_value(text)
    method, dot, name = key.partition(".")
    if not dot or not method or not name:
        raise InvalidSpec(f"--option expects METHOD.KEY=VALUE in a sweep, got {text!r}")
    return method, name, value


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    options: dict[str, dict[str, Any]] = {}
    for text in args.option or []:
        method, name, value = _method_option(text)
        options.setdefault(method, {})[name] = value
    data: dict[str, Any] = {
        **job_fields(args),
        "methods": args.methods,
        "sparsities": args.sparsities,
        "options": options,
        "save_models": args.save_models,
    }
    return parse_sweep_spec(data)


def cmd_sweep(args: argparse.Namespace) -> int:
    from twossp_core.sweep import run_sweep  # imports torch: only when a run starts

    spec = spec_from_args(args)
    out = Path(args.out)
    result = run_into_out_dir(args, run_sweep, spec)
    if args.json:
        print(json.dumps(result["rows"], indent=2))
    else:
        print((out / "comparison.md").read_text())
        print(f"comparison.json, comparison.md, comparison.png/.svg written to {out}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("sweep", help="compare methods x sparsities on one model")
    p.add_argument("--model", required=True, help="Hugging Face hub id, local model directory or .gguf file")
    p.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default)")
    p.add_argument("--sparsities", required=True, help="comma-separated target sparsities, e.g. 0.25,0.375,0.5")
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="method option, e.g. evopress.generations=20, 2ssp.alpha=1.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-models", action="store_true", help="also export every pruned model under OUT/models/")
    add_export_argument(p)
    add_heal_arguments(p)
    add_data_arguments(p)
    add_task_arguments(p)
    add_out_arguments(p, "output directory for the comparison")
    p.set_defaults(func=cmd_sweep)
