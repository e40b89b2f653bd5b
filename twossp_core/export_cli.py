"""The `twossp export` subcommand: save a pruned model directory again in another export format, e.g. a compact
job artifact as the plain base architecture that runtimes without remote code can load."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from twossp_core.errors import InvalidSpec

DTYPES = ("float32", "bfloat16", "float16")


def stored_dtype(config: dict[str, Any]) -> str:
    """The dtype a model directory was saved in (float32 when its config does not say)."""
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in DTYPES else "float32"


def cmd_export(args: argparse.Namespace) -> int:
    from twossp_core.cli import check_out_dir, export_option_values
    from twossp_core.export.load import load_pruned
    from twossp_core.export.registry import export_options
    from twossp_core.pipeline import export_model

    source, out = Path(args.model), Path(args.out)
    config_path = source / "config.json"
    if not config_path.is_file():
        raise InvalidSpec(f"--model {source}: not a model directory (no config.json)")
    if out.resolve() == source.resolve():
        raise InvalidSpec("--out must be another directory than --model")
    check_out_dir(out, args.overwrite)
    options = export_options(args.format, export_option_values(args)).model_dump()
    config = json.loads(config_path.read_text())
    model, tokenizer = load_pruned(source, dtype=stored_dtype(config))
    entry = export_model(model, tokenizer, out, config.get("twossp") or {}, args.format, options)
    print(f"{args.format} model written to {out} ({entry['stored_params']:,} parameters)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="save a pruned model directory again in another export format")
    p.add_argument("--model", required=True, help="a directory written by twossp (or any local model directory)")
    from twossp_core.cli import add_export_argument

    add_export_argument(p, flag="--format", default="portable")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out directory")
    p.set_defaults(func=cmd_export)
