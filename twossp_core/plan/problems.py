"""Every problem of a request at once (torch-free).

pydantic checks a request's fields together, but stops before the checks that span fields (the method and its
options, the export format and its options) as soon as one field is wrong, and such a check stops at its own first
problem. So a request with a bad sparsity and bad options would be refused for the sparsity alone, and refused
again for the options once fixed. These checks run here on the raw request, each on its own, so the refusal names
them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twossp_core.errors import InvalidSpec
from twossp_core.plan.exports import export_options
from twossp_core.plan.methods import method_config, method_names


def _problem(check: Callable[[], Any]) -> InvalidSpec | None:
    try:
        check()
    except InvalidSpec as exc:
        return exc
    except (TypeError, ValueError, AttributeError, KeyError):
        return None  # a field of the wrong shape: its own validation says so
    return None


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def registry_problems(data: Any, *, sweep: bool) -> list[InvalidSpec]:
    """The problems of the request's method(s) and options, and of its export format and export options, each
    checked on its own (messages as the checks word them, each about its field: `options.alpha`, in a sweep
    `options.<method>.alpha` and `methods`)."""
    if not isinstance(data, dict):
        return []
    found: list[InvalidSpec | None] = []
    export = data.get("export", "compact")
    if isinstance(export, str):
        found.append(_problem(lambda: export_options(export, _object(data.get("export_options")))))
    options = _object(data.get("options")) or {}
    if sweep:
        methods = _names(data.get("methods", ["all"]))
        methods = method_names() if "all" in methods else methods
        for name in methods:
            found.append(_problem(lambda name=name: method_config(
                name, _object(options.get(name)), field=f"options.{name}", method_field="methods")))
    else:
        method = data.get("method", "2ssp")
        if isinstance(method, str):
            found.append(_problem(lambda: method_config(method, options)))
    unique: dict[str, InvalidSpec] = {}  # each message once
    for problem in found:
        if problem is not None:
            unique.setdefault(str(problem), problem)
    return list(unique.values())
