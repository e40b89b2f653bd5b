"""ARC-Easy and ARC-Challenge (lm-eval tasks `arc_easy`, `arc_challenge`; split test).

lm-eval 0.4: context "Question: {question}\\nAnswer:", the choice texts as continuations, gold = the position of
`answerKey` among the choice labels (so items labelled 1-4 and items with 3 or 5 choices work unchanged); acc and
acc_norm. Local files hold the `allenai/ai2_arc` rows, one JSON object per line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twossp_core.evaluation.zeroshot.items import Item, TaskItems, choice_requests, first
from twossp_core.evaluation.zeroshot.reading import hub_rows, read_jsonl

SUBSETS = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}
HUB = "allenai/ai2_arc"


def item(doc: dict[str, Any]) -> Item:
    labels, texts = list(doc["choices"]["label"]), list(doc["choices"]["text"])
    return Item(requests=choice_requests(f"Question: {doc['question']}\nAnswer:", texts),
                gold=labels.index(doc["answerKey"]), choices=tuple(texts))


def local_file(task: str, path: Path) -> Path | None:
    """The split's file: `path` itself, or in a task directory `ARC-Easy-test.jsonl` / `test.jsonl`."""
    if path.is_file():
        return path
    for name in (f"{SUBSETS[task]}-test.jsonl", "test.jsonl"):
        if (path / name).is_file():
            return path / name
    return None


def read_local(task: str, path: Path, limit: int | None) -> TaskItems:
    docs = read_jsonl(path)
    return TaskItems(name=task, items=[item(d) for d in first(docs, limit)], source=str(path), total=len(docs))


def read_hub(task: str, limit: int | None) -> TaskItems:
    docs = hub_rows(HUB, SUBSETS[task], "test")
    return TaskItems(name=task, items=[item(d) for d in first(docs, limit)], source=f"hub:{HUB}/{SUBSETS[task]}",
                     total=len(docs))
