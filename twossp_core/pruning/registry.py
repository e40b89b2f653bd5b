"""A method's implementation, named by its entry in the method registry (twossp_core/plan/methods.py) and
loaded here when a run starts."""

from __future__ import annotations

from twossp_core.plan.methods import method_entry
from twossp_core.plan.schema import load_object


def method_class(name: str) -> type:
    cls: type = load_object(method_entry(name).impl)
    return cls
