"""`twossp prune`: prune a model to a target sparsity and save it."""

from __future__ import annotations

import argparse
import json
import sys
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
from twossp_core.cli.summary import format_summary
from twossp_core.plan.methods import method_names
from twossp_core.plan.spec import PruneSpec, parse_spec


def spec_from_args(args: argparse.Namespace, *, sparsity: float, method: str) -> PruneSpec:
    options = dict(option_value(o) for o in (args.option or []))
    return parse_spec({**job_fields(args), "sparsity": sparsity, "method": method, "options": options})


def cmd_prune(args: argparse.Namespace) -> int:
    from twossp_core.pipeline import run_prune  # imports torch: only when a run starts

    spec = spec_from_args(args, sparsity=args.sparsity, method=args.method)
    out = Path(args.out)
    report = run_into_out_dir(args, run_prune, spec)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_summary(report))
        print(f"pruned model and report.json written to {out}")
    for warning in report.get("warnings", []):
        print(f"twossp: warning: {warning}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("prune", help="prune a model to a target sparsity and save it")
    p.add_argument("--model", required=True, help="Hugging Face hub id, local model directory or .gguf file")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of block parameters to remove")
    # checked with the request (one line naming the methods), not by argparse (which prints the usage)
    p.add_argument("--method", default="2ssp", help=f"one of {', '.join(method_names())} (default 2ssp)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. alpha=1.5, num_attention_to_prune=2, stage2_windows=1")
    p.add_argument("--seed", type=int, default=0)
    add_data_arguments(p)
    add_heal_arguments(p)
    add_task_arguments(p)
    add_out_arguments(p, "output directory for the pruned model and report.json")
    add_export_argument(p)
    p.set_defaults(func=cmd_prune)
