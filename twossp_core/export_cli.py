"""The `twossp export` subcommand: save a pruned model directory again in another export format, e.g. a compact
job artifact as the plain base architecture that runtimes without remote code can load.

A model larger than `--max-host-memory` is exported block by block: its safetensors files are read one decoder block
at a time and every format is written one block at a time (twossp_core/export/streamed.py), as jobs do."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twossp_core.errors import InvalidSpec
from twossp_core.memory import LOAD_FACTOR, format_size, parse_size

if TYPE_CHECKING:
    from twossp_core.runtime.tensor_files import TensorEntry

DTYPES = ("float32", "bfloat16", "float16")


def stored_dtype(config: dict[str, Any]) -> str:
    """The dtype a model directory was saved in (float32 when its config does not say)."""
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in DTYPES else "float32"


EXPORT_MODES = ("auto", "in-memory", "block-by-block")


@dataclass(frozen=True)
class ExportPlan:
    """What exporting a saved model directory holds at its peak, from its safetensors headers."""

    weights: int  # every tensor's bytes
    largest_block: int  # the largest decoder block's bytes
    resident: int  # the tensors outside the blocks (embeddings, final norm, LM head)
    baseline: int  # this process before the model: interpreter, torch, transformers

    @property
    def in_memory(self) -> int:
        """Loading the model whole: the file's pages and the copied tensors (memory.LOAD_FACTOR)."""
        return self.baseline + LOAD_FACTOR * self.weights

    @property
    def block_by_block(self) -> int:
        """The resident tensors and three blocks: the one being written, the next one read, the writer's copy."""
        return self.baseline + self.resident + 3 * self.largest_block

    def describe(self, mode: str) -> str:
        return (f"export memory plan ({mode}): weights {format_size(self.weights)}, one block "
                f"{format_size(self.largest_block)}, baseline {format_size(self.baseline)}; peak in memory "
                f"{format_size(self.in_memory)}, block by block {format_size(self.block_by_block)}")

    def choose(self, execution: str, budget: int | None) -> str:
        """`execution`, or (auto) in memory unless that does not fit the budget; InvalidSpec when the chosen mode
        does not fit it."""
        if execution == "auto":
            execution = "in-memory" if budget is None or self.in_memory <= budget else "block-by-block"
        need = self.in_memory if execution == "in-memory" else self.block_by_block
        if budget is not None and need > budget:
            raise InvalidSpec(f"the export does not fit --max-host-memory {format_size(budget)}: "
                              f"{self.describe(execution)}")
        return execution


def export_plan(entries: dict[str, TensorEntry], prefix: str, *, baseline: int) -> ExportPlan:
    """The plan of a model directory's safetensors index (`index_directory`), whose decoder blocks' tensors are
    named `prefix` + block index + "." (`block_prefix`)."""
    blocks: dict[str, int] = {}
    weights = 0
    for name, entry in entries.items():
        size = entry.end - entry.start
        weights += size
        if name.startswith(prefix):
            block = name[len(prefix):].partition(".")[0]
            blocks[block] = blocks.get(block, 0) + size
    in_blocks = sum(blocks.values())
    return ExportPlan(weights, max(blocks.values(), default=0), weights - in_blocks, baseline)


def cmd_export(args: argparse.Namespace) -> int:
    from twossp_core.cli import check_out_dir, export_option_values
    from twossp_core.export.load import load_pruned
    from twossp_core.export.registry import export_options
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
    options = export_options(args.format, export_option_values(args)).model_dump()
    config = json.loads(config_path.read_text())
    budget = parse_size(args.max_host_memory) if args.max_host_memory is not None else None
    baseline = (current_rss() or 0) + RUNTIME_ALLOWANCE
    entries = index_directory(source)  # read once: the plan and a block-by-block load use it
    plan = export_plan(entries, block_prefix(str(source)), baseline=baseline)
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
    from twossp_core.cli import add_export_argument

    add_export_argument(p, flag="--format", default="portable")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out directory")
    p.add_argument("--max-host-memory", default=None, metavar="SIZE",
                   help="budget of this process's peak RSS (bytes or a size such as 800MB): a model that does not "
                   "fit in memory is exported block by block")
    p.add_argument("--execution", default="auto", choices=list(EXPORT_MODES),
                   help="auto (default): in memory unless that does not fit --max-host-memory; block-by-block: read "
                   "and write one decoder block at a time")
    p.set_defaults(func=cmd_export)
