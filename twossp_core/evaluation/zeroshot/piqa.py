"""PIQA (lm-eval task `piqa`; split validation, 1,838 items).

lm-eval 0.4: context "Question: {goal}\\nAnswer:", continuations sol1 and sol2, gold = label; acc and acc_norm.
Local files are the upstream release: `valid.jsonl` ({"goal", "sol1", "sol2"} per line) with `valid-labels.lst`
(one 0/1 per line, aligned by line) beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twossp_core.errors import DataError
from twossp_core.evaluation.zeroshot.items import Item, TaskItems, choice_requests, first
from twossp_core.evaluation.zeroshot.reading import hub_rows, read_jsonl

NAME = "piqa"
HUB = "baber/piqa"


def item(doc: dict[str, Any]) -> Item:
    choices = [doc["sol1"], doc["sol2"]]
    return Item(requests=choice_requests(f"Question: {doc['goal']}\nAnswer:", choices), gold=int(doc["label"]),
                choices=tuple(choices))


def local_file(task: str, path: Path) -> Path | None:
    if path.is_file():
        return path
    return path / "valid.jsonl" if (path / "valid.jsonl").is_file() else None


def labels_file(path: Path) -> Path:
    return path.with_name(path.name.replace(".jsonl", "-labels.lst"))


def companion_files(path: Path) -> list[Path]:
    """The files read beside `path`: its labels file, when there is one."""
    labels = labels_file(path)
    return [labels] if labels.is_file() else []


def read_local(task: str, path: Path, limit: int | None) -> TaskItems:
    docs = read_jsonl(path)
    if not all("label" in d for d in docs):
        labels_path = labels_file(path)
        if not labels_path.is_file():
            raise DataError(f"piqa: {path} has no labels and {labels_path} does not exist")
        labels = labels_path.read_text().split()
        if len(labels) != len(docs):
            raise DataError(f"piqa: {labels_path} has {len(labels)} labels for {len(docs)} items in {path}")
        docs = [{**d, "label": int(label)} for d, label in zip(docs, labels, strict=True)]
    return TaskItems(name=task, items=[item(d) for d in first(docs, limit)], source=str(path), total=len(docs))


def read_hub(task: str, limit: int | None) -> TaskItems:
    docs = hub_rows(HUB, None, "validation")
    return TaskItems(name=task, items=[item(d) for d in first(docs, limit)], source=f"hub:{HUB}", total=len(docs))
