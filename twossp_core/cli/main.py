"""The `twossp` parser: the core's commands and those of the `twossp.commands` entry-point group, and the exit
codes of the errors they raise."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from twossp_core import __version__
from twossp_core.cli import convert_gguf, evaluate, export, prune, sweep
from twossp_core.cli.terms import flags_of, in_cli_terms
from twossp_core.errors import TwosspError

EXIT_USER_ERROR = 2
COMMANDS = (prune, evaluate, sweep, export, convert_gguf)  # in the order `twossp --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twossp", description="2SSP structured pruning for causal LMs")
    parser.add_argument("--version", action="version", version=f"twossp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    for ep in entry_points(group="twossp.commands"):
        try:
            register: Callable[[Any], None] = ep.load()
        except ImportError as exc:  # an install older than the source tree: the other commands still work
            print(f"twossp: warning: command {ep.name!r} unavailable ({ep.value}: {exc}); reinstall twossp",
                  file=sys.stderr)
            continue
        register(sub)
    return parser


def show_notices() -> None:
    """The library's notices (the memory plan) go to stderr, before the work starts."""
    logger = logging.getLogger("twossp")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show_notices()
    try:
        return int(args.func(args) or 0)
    except TwosspError as exc:  # the library names the request's fields; say them as this command's flags
        message = in_cli_terms(exc, flags_of(parser))
        print(f"twossp: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a path the file system refuses: no permission, a disk full, a loop in an output path
        print(f"twossp: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("twossp: interrupted", file=sys.stderr)
        return 130
