"""What the method, export-format and family registries share: entries looked up by name, objects named by
"module:attribute" and loaded when first used, options validated against a declared pydantic schema."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, PlainSerializer, SerializationInfo, ValidationError, WrapValidator

from twossp_core.errors import FieldProblem, InvalidSpec

EntryT = TypeVar("EntryT")


def _keep_validated(value: Any, handler: Any) -> Any:
    return value if isinstance(value, BaseModel) else handler(value)


def _as_json_object(value: Any, info: SerializationInfo) -> Any:
    return value.model_dump(mode=info.mode) if isinstance(value, BaseModel) else value


# A request field that holds a registry entry's options (a method's, an export format's): a JSON object in the
# request and in storage, the entry's validated options model once the request is parsed (the request's validator
# turns the one into the other with validate_options); an options model given again, as when a sweep's cell is made
# from the sweep, is kept as it is. It serializes as that model's model_dump, so a stored spec holds plain JSON.
OptionsObject = Annotated[
    dict[str, Any], WrapValidator(_keep_validated), PlainSerializer(_as_json_object, return_type=dict[str, Any])
]


def load_object(path: str) -> Any:
    """The object a "module:attribute" path names (its module imported now)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def entry_of(table: Mapping[str, EntryT], name: str, what: str, *, field: str | None = None) -> EntryT:
    """`table[name]`, or InvalidSpec naming the known entries (`what`: "method", "export format"; `field`: the
    request's field that names it)."""
    entry = table.get(name)
    if entry is None:
        raise InvalidSpec(f"unknown {what} {name!r}; available: {', '.join(table)}", field=field)
    return entry


def validate_options(
    schema: str, options: BaseModel | Mapping[str, Any] | None, *, strict: bool, label: str, field: str
) -> BaseModel:
    """`options` as the schema ("module:Class") declares them; InvalidSpec "`label`: field: problem" otherwise, each
    problem about its option under `field` (the request's field that holds the options: `options.alpha`).
    strict: every value of its exact type (a number must be a number, not "1.5"; the service's requests). Options
    already of the schema's class were validated when they were made and are returned as they are."""
    config_cls = load_object(schema)
    if isinstance(options, config_cls):
        return options
    try:
        return config_cls.model_validate(options or {}, strict=strict)
    except ValidationError as exc:
        parts = [FieldProblem(p.field, f"{label}: {p.message}", p.reason).within(field)
                 for p in validation_problems(exc)]
        raise InvalidSpec(f"{label}: {format_validation_error(exc)}", field=field, parts=parts) from None


def validation_problems(exc: Any) -> list[FieldProblem]:
    """pydantic's errors as problems: each about the field its `loc` names (None for a check of the whole model),
    its message `loc: msg` as format_validation_error words it."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = err.get("msg", "invalid")
        msg = msg.removeprefix("Value error, ")
        problems.append(FieldProblem(loc, f"{loc}: {msg}", msg) if loc else FieldProblem(None, msg))
    return problems


def format_validation_error(exc: Any) -> str:
    return "; ".join(problem.message for problem in validation_problems(exc))
