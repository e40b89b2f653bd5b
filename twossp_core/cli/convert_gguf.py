"""`twossp convert-gguf`: a GGUF file written once as a plain Hugging Face directory.

A GGUF file can be passed to every command as it is (it is dequantized on each load, in memory); the directory
loads faster, runs block by block or over several devices, and keeps the file's name, sha256 and quantization type
in its config.json (`twossp_source`), which reports and model cards made from it record. The last line printed on
stdout is the directory (scripts/smollm2.sh reads it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twossp_core.cli.options import check_out_dir
from twossp_core.cli.running import StageBars
from twossp_core.errors import InvalidSpec, ModelNotFound
from twossp_core.gguf_source import gguf_file_of


def cmd_convert_gguf(args: argparse.Namespace) -> int:
    from twossp_core.runtime.gguf_load import convert_gguf  # imports torch: only when a conversion runs

    source, out = Path(args.source).expanduser(), Path(args.out).expanduser()
    if not source.exists():
        raise ModelNotFound(f"{args.source}: no such .gguf file or directory")
    gguf = gguf_file_of(source)
    if gguf is None:
        raise InvalidSpec(f"{args.source}: not a .gguf file (nor a directory holding one without config.json)")
    check_out_dir(out, args.overwrite)
    bars = StageBars(enabled=not args.no_progress)
    try:
        record = convert_gguf(gguf, out, dtype=args.dtype, progress=bars)
    finally:
        bars.close()
    print(f"{record['file']} ({record['quantization']}, sha256 {record['sha256'][:16]}...) written as {args.dtype} "
          f"in {record['seconds']:.1f}s to", file=sys.stderr)
    print(out)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("convert-gguf", help="write a GGUF file once as a plain Hugging Face model directory")
    p.add_argument("source", help="a .gguf file (or a directory holding exactly one)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights (default float32)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out directory")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_convert_gguf)
