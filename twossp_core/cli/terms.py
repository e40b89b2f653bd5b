"""Error messages in the command line's terms.

The library's errors name the request's JSON fields they are about (`doc_separator`, `options.round_to`), the terms of
the API, the dashboard and a job's spec, and carry those fields as data (twossp_core.errors); the command line
prints each problem with its own flag instead (`--doc-separator`, `--option round_to`), taken from its parser so a
renamed flag cannot go stale. A field a message mentions in backquotes (`doc_separator`) is a flag there too.
"""

from __future__ import annotations

import argparse
import re

from twossp_core.errors import FieldProblem, TwosspError

# JSON objects whose keys the command line takes as KEY=VALUE of one flag
OBJECT_FLAGS = {"options": "--option", "export_options": "--export-option", "heal": "--heal-option",
                "task_limits": "--task-limit"}
_FIELD = r"[a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_]+)*"
_QUOTED = re.compile(rf"`(?P<field>{_FIELD})(?P<rest>=[^`]*)?`")


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> its long flag, over the parser and every subcommand's parser."""
    flags: dict[str, str] = {}
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:  # noqa: SLF001 - argparse keeps its actions here
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                stack.extend(action.choices.values())
            longs = [s for s in action.option_strings if s.startswith("--")]
            if longs and action.dest not in flags:
                flags[action.dest] = longs[0]
    return flags


def _flag(field: str, flags: dict[str, str]) -> str | None:
    """The flag that sets `field`: `options.alpha` is `--option alpha` (a sweep's `options.2ssp.alpha`:
    `--option 2ssp.alpha`), `eval.1` (an item of a list) is `--eval`."""
    head, _, key = field.partition(".")
    if head in OBJECT_FLAGS and key:
        return f"{OBJECT_FLAGS[head]} {key}"
    if key.isdigit():
        return flags.get(head)
    return flags.get(field)


def _in_cli_terms(problem: FieldProblem, flags: dict[str, str]) -> str:
    flag = _flag(problem.field, flags) if problem.field else None
    if flag is None or problem.reason is None:  # no flag sets it, or the message does not start with where
        return problem.message
    return f"{flag}: {problem.reason}"


def in_cli_terms(error: TwosspError, flags: dict[str, str]) -> str:
    """The error's message with each problem naming the flag that sets its field (`--seq-len: ...`, a bad option
    as `--option KEY: ...`), and every `field` in backquotes as its flag."""

    def quoted(match: re.Match[str]) -> str:
        flag = _flag(match["field"], flags)
        if flag is None:
            return match[0]
        return f"`{flag}{match['rest'] or ''}`"

    message = "; ".join(_in_cli_terms(problem, flags) for problem in error.problems)
    return _QUOTED.sub(quoted, message)
