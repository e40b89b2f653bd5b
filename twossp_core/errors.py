"""Exception types of the library. Every user-facing failure is one of these, with a readable message.

A failure about the request also says which of its fields it is about, as data: `field` (the request's JSON field,
dotted for a nested one: `sparsity`, `options.alpha`, `options.2ssp.alpha` in a sweep, `export_options.type`,
`heal.steps`, `eval.1`), and `problems` — one FieldProblem per bad field when a refusal names several at once. The
API returns them beside its message, the dashboard shows each message next to its form field, and the command line
names the field by its flag. A failure that spans fields (a target the model cannot reach with these budgets, say)
has no field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldProblem:
    """One problem of a request. `field`: the JSON field it is about (None: it spans fields); `message`: what is
    wrong, worded to stand alone; `reason`: the message without the words that say where
    ("Input should be less than 1" for "sparsity: Input should be less than 1"), for a caller that names the field
    its own way (the command line's flags), None when the message has no such words."""

    field: str | None
    message: str
    reason: str | None = None

    def within(self, prefix: str) -> FieldProblem:
        """The same problem with its field under `prefix` (`alpha` under `options` is `options.alpha`)."""
        return FieldProblem(f"{prefix}.{self.field}" if self.field else prefix, self.message, self.reason)


class TwosspError(Exception):
    """Base class: a failure the user can act on (bad input, infeasible target, missing data)."""

    def __init__(self, message: str = "", *, field: str | None = None, parts: Sequence[FieldProblem] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.parts = tuple(parts)

    @property
    def problems(self) -> tuple[FieldProblem, ...]:
        """Each problem with the field it is about: the parts when the refusal names several, else the message as
        one problem (its field None when it has none)."""
        return self.parts or (FieldProblem(self.field, str(self)),)

    def with_field(self, field: str) -> TwosspError:
        """This error, or a copy of it, about `field` where it names no field itself (its message unchanged)."""
        if self.field is not None or self.parts:
            return self
        return type(self)(str(self), field=field)


def joined_problems(errors: Iterable[TwosspError]) -> list[FieldProblem]:
    """The problems of several errors, in order, each once."""
    return list(dict.fromkeys(problem for error in errors for problem in error.problems))


class InvalidSpec(TwosspError):
    """The request itself is malformed: a value out of range, an unknown option or method."""


class InfeasibleTarget(TwosspError):
    """The requested sparsity cannot be reached with this method on this model."""


class UnsupportedModel(TwosspError):
    """The model's architecture has no adapter."""


class ModelNotFound(TwosspError):
    """The model id or path could not be resolved or loaded."""


class DataError(TwosspError):
    """Calibration or evaluation data could not be read, or yields no full window."""


class Cancelled(TwosspError):
    """The caller asked the running work to stop."""


class HealDiverged(TwosspError):
    """The heal's training loss became NaN or infinite (the learning rate is too high for this model)."""
