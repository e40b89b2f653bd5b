"""`twossp export`: save a pruned model directory again in another export format, e.g. a compact job artifact as
the plain base architecture that runtimes without remote code can load.

A model larger than `--max-host-memory` is exported block by block: its safetensors files are read one decoder block
at a time and every format is written one block at a time (twossp_core/export/streamed.py), as jobs do."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from twossp_core.cli.options import add_export_argument, add_out_arguments, check_out_dir, export_option_values
from twossp_core.errors import InvalidSpec
from twossp_core.plan.export_memory import EXPORT_MODES, export_plan
from twossp_core.plan.exports import export_format, export_options
from twossp_core.plan.sizes import parse_size

DTYPES = ("float32", "bfloat16", "float16")


def stored_dtype(config: dict[str, Any]) -> str:
    """The dtype a model directory was saved in (float32 when its config does not say)."""
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in DTYPES else "float32"


def cmd_export(args: argparse.Namespace) -> int:
    # these import torch: only when an export runs
    from twossp_core.export.load import load_pruned
    from twossp_core.pipeline import export_model
    from twossp_core.runtime.modes import RUNTIME_ALLOWANCE
    from twossp_core.runtime.offload import block_prefix, load_block_by_block
    from twossp_core.runtime.peaks import current_rss
    from twossp_core.runtime.tensor_files import index_directory

    source, out = Path(args.model), Path(args.out)
    config_path = source / "config.json"
    if not config_path.is_file():
        raise InvalidSpec(f"--model {source}: not a model directory (no config.json)")
    if out.resolve() == source.resolve():
        raise InvalidSpec("--out must be another directory than --model")
    check_out_dir(out, args.overwrite)
    options = export_options(args.format, export_option_values(args))
    config = json.loads(config_path.read_text())
    budget = parse_size(args.max_host_memory) if args.max_host_memory is not None else None
    baseline = (current_rss() or 0) + RUNTIME_ALLOWANCE
    entries = index_directory(source)  # read once: the plan and a block-by-block load use it
    plan = export_plan(entries, block_prefix(str(source)), baseline=baseline,
                       held_blocks=export_format(args.format).held_blocks)
    mode = plan.choose(args.execution, budget)
    print(plan.describe(mode), file=sys.stderr)
    if mode == "block-by-block":
        model, tokenizer = load_block_by_block(str(source), dtype=stored_dtype(config), entries=entries)
    else:
        model, tokenizer = load_pruned(source, dtype=stored_dtype(config))
    entry = export_model(model, tokenizer, out, config.get("twossp") or {}, args.format, options)
    print(f"{args.format} model written to {out} ({entry['stored_params']:,} parameters, {mode})")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="save a pruned model directory again in another export format")
    p.add_argument("--model", required=True, help="a directory written by twossp (or any local model directory)")
    add_export_argument(p, flag="--format", default="portable")
    add_out_arguments(p, "output directory")
    p.add_argument("--max-host-memory", default=None, metavar="SIZE",
                   help="budget of this process's peak RSS (bytes or a size such as 800MB): a model that does not "
                   "fit in memory is exported block by block")
    p.add_argument("--execution", default="auto", choices=list(EXPORT_MODES),
                   help="auto (default): in memory unless that does not fit --max-host-memory; block-by-block: read "
                   "and write one decoder block at a time")
    p.set_defaults(func=cmd_export)
