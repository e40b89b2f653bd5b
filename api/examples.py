"""The examples the submit form and the OpenAPI document show, built from the registries (each method and export
format declares an example of its options), so no example can name an option that does not exist."""

from __future__ import annotations

import json
from typing import Any

from twossp_core.plan.exports import export_example, format_names
from twossp_core.plan.methods import method_example, method_names
from twossp_core.plan.tasks import PAPER, PAPER_TASKS

EXAMPLE_MODEL = "meta-llama/Llama-2-7b-hf"
# a heal's options: the options are HealConfig's (docs/heal.md)
HEAL_EXAMPLE: dict[str, Any] = {"loss": "kd", "steps": 200}
# zero-shot scoring on a subset: the whole of the paper's six is over a job's default planned work (plan/cost.py);
# MMLU's limit counts per subject (57 of them)
ZERO_SHOT_LIMIT = 100
ZERO_SHOT_LIMITS = {"mmlu": 5}


def method_examples() -> dict[str, dict[str, Any]]:
    return {name: method_example(name) for name in method_names()}


def export_examples() -> dict[str, dict[str, Any]]:
    return {name: export_example(name) for name in format_names()}


def sweep_options_example(methods: list[str]) -> dict[str, dict[str, Any]]:
    """A sweep's `options`: each method's example under its name."""
    return {name: method_example(name) for name in methods}


def as_json(value: dict[str, Any]) -> str:
    """How the form shows an example (what a user would type)."""
    return json.dumps(value, separators=(", ", ": "))


def _prune(method: str, **fields: Any) -> dict[str, Any]:
    return {"model": EXAMPLE_MODEL, "method": method, "sparsity": 0.25, "options": method_example(method),
            "calibration": ["c4"], "eval": ["wikitext2"], **fields}


def request_examples() -> dict[str, dict[str, Any]]:
    """Named examples of `POST /jobs` bodies (OpenAPI `examples`): a prune with every method's example options, a
    sweep, an export in every format that has options, a heal, and zero-shot scoring."""
    examples: dict[str, dict[str, Any]] = {}
    for method in method_names():
        examples[f"prune-{method}"] = {
            "summary": f"prune with {method} to 25 % sparsity",
            "value": _prune(method),
        }
    sweep_methods = ["2ssp", "shortgpt"]
    examples["sweep"] = {
        "summary": "compare methods at two sparsities",
        "value": {"kind": "sweep", "model": EXAMPLE_MODEL, "methods": sweep_methods, "sparsities": [0.25, 0.375],
                  "options": sweep_options_example(sweep_methods), "calibration": ["c4"], "eval": ["wikitext2"]},
    }
    for name, options in export_examples().items():
        if options:
            examples[f"export-{name}"] = {
                "summary": f"prune with 2ssp and export in the {name} format",
                "value": _prune("2ssp", export=name, export_options=options),
            }
    examples["heal"] = {"summary": "prune with 2ssp, then heal", "value": _prune("2ssp", heal=HEAL_EXAMPLE)}
    examples["zero-shot"] = {
        "summary": f"prune with 2ssp and score the paper's six zero-shot tasks ({', '.join(PAPER_TASKS)}), the "
        f"first {ZERO_SHOT_LIMIT} items of each, of MMLU the first {ZERO_SHOT_LIMITS['mmlu']} of each subject",
        "value": _prune("2ssp", tasks=[PAPER], task_limit=ZERO_SHOT_LIMIT, task_limits=ZERO_SHOT_LIMITS),
    }
    return examples
