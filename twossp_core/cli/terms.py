"""Error messages in the command line's terms.

The library's messages name what went wrong by the request's JSON fields (`doc_separator`, `options.round_to`), the
terms of the API, the dashboard and a job's spec; the command line prints them with its own flags instead
(`--doc-separator`, `--option round_to`), taken from its parser so a renamed flag cannot go stale.
"""

from __future__ import annotations

import argparse
import re

# JSON objects whose keys the command line takes as KEY=VALUE of one flag
OBJECT_FLAGS = {"options": "--option", "export_options": "--export-option", "heal": "--heal-option"}
_FIELD = r"[a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_]+)*"
_LEADING = re.compile(rf"^(?P<field>{_FIELD}): ")
_QUOTED = re.compile(rf"`(?P<field>{_FIELD})(?P<rest>=[^`]*)?`")
# the registries' wording of a bad option: "options for 2ssp: alpha: ...", "export options for gguf: dtype: ..."
_OPTION = re.compile(r"^(?P<what>export )?options for (?P<owner>[\w.-]+): (?P<key>[A-Za-z_]\w*): ")


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
    head, _, key = field.partition(".")
    if head in OBJECT_FLAGS and key:
        return f"{OBJECT_FLAGS[head]} {key}"
    return flags.get(field)


def in_cli_terms(message: str, flags: dict[str, str], *, sweep: bool = False) -> str:
    """`message` with the JSON fields it names (each "field: " part, a bad option, and `field` in backquotes) as
    flags; `sweep`: method options are METHOD.KEY, as the sweep command takes them."""

    def leading(part: str) -> str:
        option = _OPTION.match(part)
        if option:
            flag = OBJECT_FLAGS["export_options" if option["what"] else "options"]
            key = f"{option['owner']}.{option['key']}" if sweep and not option["what"] else option["key"]
            return f"{flag} {key}: {part[option.end():]}"
        match = _LEADING.match(part)
        flag = _flag(match["field"], flags) if match else None
        return f"{flag}: {part[match.end():]}" if match and flag else part

    def quoted(match: re.Match[str]) -> str:
        flag = _flag(match["field"], flags)
        if flag is None:
            return match[0]
        return f"`{flag}{match['rest'] or ''}`"

    parts = [leading(part) for part in message.split("; ")]
    return _QUOTED.sub(quoted, "; ".join(parts))
