"""Zero-shot results in a model card: the `model-index` results the Hugging Face Hub reads, and a table for the
card's text (torch-free).

The card describes the exported model: the healed one when the run healed, else the pruned one. Results of an
approximate task (HellaSwag read from the text extraction) stay out of `model-index`, where the Hub would show
them as the task's figures; the table states them, marked approximate.
"""

from __future__ import annotations

from typing import Any

from twossp_core.evaluation.zeroshot.summary import accuracy_text, labels

# task -> (Hub dataset lm-eval 0.4 reads, display name, config, split)
DATASETS = {
    "winogrande": ("allenai/winogrande", "WinoGrande", "winogrande_xl", "validation"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "ARC-Challenge", "test"),
    "hellaswag": ("Rowan/hellaswag", "HellaSwag", None, "validation"),
    "piqa": ("baber/piqa", "PIQA", None, "validation"),
    "mmlu": ("cais/mmlu", "MMLU", "all", "test"),
}
METRIC_NAMES = {"acc": "accuracy", "acc_norm": "normalized accuracy"}


def exported_label(block: dict[str, Any]) -> str:
    return "healed" if "healed" in labels(block) else "pruned"


def eval_results(block: dict[str, Any]) -> list[Any]:
    """huggingface_hub EvalResults of the exported model (0-shot; `limit` in the dataset args when a subset)."""
    from huggingface_hub import EvalResult

    label = exported_label(block)
    results = []
    for name, entry in block["tasks"].items():
        if entry.get("approximate") or name not in DATASETS:
            continue
        limit = entry.get("limit", block.get("limit"))  # reports before per-task limits carry the block's only
        args: dict[str, Any] = {"num_few_shot": 0} if limit is None else {"num_few_shot": 0, "limit": limit}
        dataset, title, config, split = DATASETS[name]
        for metric in entry["metrics"]:
            value = (entry.get(label) or {}).get(metric)
            if value is None:
                continue
            results.append(EvalResult(
                task_type="text-generation", task_name="Text Generation", dataset_type=dataset,
                dataset_name=f"{title} (0-shot)", dataset_config=config, dataset_split=split, dataset_args=dict(args),
                metric_type=metric, metric_name=METRIC_NAMES[metric], metric_value=round(float(value), 4),
            ))
    return results


def card_table(block: dict[str, Any]) -> list[str]:
    """Markdown lines: every task's accuracy (± standard error) for the dense, pruned (and healed) models."""
    shown = labels(block)
    lines = [f"Scored as lm-eval-harness 0.4 scores these tasks, 0-shot; {block['subset']}; ± the standard error; "
             "Δ: the difference from the dense model on the same items (paired).", "",
             "| task | metric | items | " + " | ".join(shown) + " |", "|---|---|---|" + "---|" * len(shown)]
    for name, entry in block["tasks"].items():
        for metric in entry["metrics"]:
            cells = [accuracy_text(entry.get(label), metric, plus_minus=" ± ", missing="–") for label in shown]
            title = name + (" (approximate)" if entry.get("approximate") else "")
            lines.append(f"| {title} | {metric} | {entry['n']} | " + " | ".join(cells) + " |")
    notes = sorted({e["note"] for e in block["tasks"].values() if e.get("approximate") and e.get("note")})
    if notes:
        lines += ["", *[f"Approximate: {note}; it is left out of the card's model-index." for note in notes]]
    return lines
