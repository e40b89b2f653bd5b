"""The submit form: its fields → the API's request body, and each problem of the API's refusal → the form field it
is shown next to (the refusal names its fields as data: twossp_core.errors).

The body goes through the same `submit_job` as `POST /jobs`, so the form accepts and refuses exactly what the
API does. A number typed into a field is sent as a JSON number (the API takes no other); text that spells no
number is sent as typed, so it gets the API's own message for that field.
"""

from __future__ import annotations

import json
from typing import Any

from api import examples as ex
from api.errors import problems_of
from twossp_core.errors import FieldProblem, InvalidSpec
from twossp_core.plan.methods import METHODS
from twossp_core.plan.tasks import PAPER, PAPER_TASKS, TASK_NAMES, TASK_SIZES, parse_task_limits

LINE_LISTS = ("calibration", "eval")
TEXT_FIELDS = (
    "model", "doc_separator", "seq_len", "calibration_windows", "eval_windows", "seed", "export", "dtype",
)
NUMBER_FIELDS: dict[str, type[int] | type[float]] = {
    "seq_len": int, "calibration_windows": int, "eval_windows": int, "seed": int, "sparsity": float,
}
LIST_FIELDS = ("methods", "tasks")  # checkboxes: every checked value
PRUNE_FIELDS = ("method", "sparsity")
SWEEP_FIELDS = ("sparsities",)
# the fields the form shows, in order (errors for anything else go to the top of the form)
FIELDS = (
    "kind", "model", "method", "sparsity", "methods", "sparsities", "options", "calibration", "eval",
    "doc_separator", "seq_len", "calibration_windows", "eval_windows", "seed", "dtype", "export",
    "export_options", "measure_throughput", "save_models", "heal", "tasks", "task_limit",
)
GENERAL = "_form"
ALIASES = {"task_limits": "task_limit"}  # request fields shown by another field of the form


class FormError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def method_choices() -> list[tuple[str, str]]:
    return [(name, entry.summary) for name, entry in METHODS.items()]


def task_choices() -> list[tuple[str, str]]:
    """The zero-shot tasks the form offers (twossp_core/plan/tasks.py): `paper` for the paper's six, then each one
    with the items of its split."""
    groups = {name: f" over {size.groups} subjects" if size.groups > 1 else "" for name, size in TASK_SIZES.items()}
    return [(PAPER, f"the paper's six: {', '.join(PAPER_TASKS)}")] + [
        (name, f"{TASK_SIZES[name].items:,} items{groups[name]}") for name in TASK_NAMES
    ]


def examples() -> dict[str, Any]:
    """The examples the form shows as placeholders, as JSON text (api.examples; app.js swaps them when the method,
    the methods of a sweep or the export format change)."""
    return {
        "method": {name: ex.as_json(value) for name, value in ex.method_examples().items()},
        "export": {name: ex.as_json(value) if value else "" for name, value in ex.export_examples().items()},
        "sweep": ex.as_json(ex.sweep_options_example(["2ssp"])),
        "heal": ex.as_json(ex.HEAL_EXAMPLE),
    }


def number(text: str, kind: type[int] | type[float]) -> int | float | str:
    """`text` as a number of `kind` when it spells one, else the text itself (the API then names the field)."""
    try:
        return kind(text)
    except ValueError:
        return text


def request_body(form: dict[str, list[str]]) -> dict[str, Any]:
    """The JSON body `POST /jobs` would get for this form; FormError for what cannot even be parsed."""

    def one(name: str) -> str:
        return (form.get(name) or [""])[-1].strip()

    kind = one("kind") or "prune"
    body: dict[str, Any] = {"kind": kind}
    for name in TEXT_FIELDS:
        if one(name):
            body[name] = number(one(name), NUMBER_FIELDS[name]) if name in NUMBER_FIELDS else one(name)
    if "doc_separator" in body:  # a one-line input: `\n` stands for a newline
        body["doc_separator"] = body["doc_separator"].replace("\\n", "\n")
    for name in LINE_LISTS:
        lines = [line.strip() for line in one(name).splitlines() if line.strip()]
        if lines or name == "eval":
            body[name] = lines
    body["measure_throughput"] = one("measure_throughput") == "on"
    tasks = [name for name in form.get("tasks") or [] if name]
    if tasks:  # none checked: no zero-shot scoring (the default)
        body["tasks"] = tasks
    try:  # `100`, or `100, mmlu=5` (the command line's spelling)
        every, per_task = parse_task_limits(one("task_limit"))
    except InvalidSpec as exc:
        raise FormError("task_limit", str(exc)) from None
    if every is not None:
        body["task_limit"] = every
    if per_task:
        body["task_limits"] = per_task
    if kind == "sweep":
        body["methods"] = form.get("methods") or []
        for name in SWEEP_FIELDS:
            if one(name):  # comma-separated
                body[name] = [number(part.strip(), float) for part in one(name).split(",") if part.strip()]
        body["save_models"] = one("save_models") == "on"
    else:
        for name in PRUNE_FIELDS:
            if one(name):
                body[name] = number(one(name), NUMBER_FIELDS[name]) if name in NUMBER_FIELDS else one(name)
    if one("heal") == "on":  # the options as JSON; empty: the defaults (distillation from the dense model)
        heal = one("heal_options") or "{}"
        try:
            body["heal"] = json.loads(heal)
        except ValueError as exc:
            raise FormError("heal", f"heal options: not valid JSON ({exc})") from None
    for name in ("options", "export_options"):
        text = one(name)
        if not text:
            continue
        what = name.replace("_", " ")
        try:
            body[name] = json.loads(text)
        except ValueError as exc:
            raise FormError(name, f"{what}: not valid JSON ({exc})") from None
        if not isinstance(body[name], dict):
            raise FormError(name, f"{what}: must be a JSON object")
    return body


def form_field(field: str | None) -> str:
    """The form field a request field is shown next to: its head (`options.alpha` and `options.2ssp.alpha` by the
    options, `eval.1` by the evaluation data), GENERAL for none (a problem that spans fields) or one the form does not
    show."""
    head = (field or "").split(".", 1)[0]
    head = ALIASES.get(head, head)
    return head if head in FIELDS else GENERAL


def field_errors(exc: Exception) -> dict[str, str]:
    """The API's refusal spread over the form: each problem next to the field it is about (twossp_core.errors:
    the error carries its fields as data), the rest at the top of the form."""
    errors: dict[str, str] = {}
    for problem in problems_of(exc) or [FieldProblem(None, str(exc))]:
        name = form_field(problem.field)
        errors[name] = f"{errors[name]}; {problem.message}" if name in errors else problem.message
    return errors
