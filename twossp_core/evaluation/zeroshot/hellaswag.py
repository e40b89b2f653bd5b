"""HellaSwag (lm-eval task `hellaswag`; split validation, 10,042 items).

lm-eval 0.4 builds the context from the original rows as preprocess(activity_label + ": " + ctx_a + " " +
ctx_b.capitalize()), the continuations as preprocess(ending), gold = label; acc and acc_norm. `preprocess` strips
the text, turns " [title]" into ". ", deletes every bracketed WikiHow tag and collapses double spaces.

Two kinds of local file:
- the original `hellaswag_val.jsonl` (rowanz/hellaswag; {"activity_label", "ctx_a", "ctx_b", "endings", "label"}
  per line), read exactly as lm-eval reads it; the Hub dataset `Rowan/hellaswag` is the same rows;
- the text extraction `hellaswag_val_full.txt[.bz2]` (6 lines per item: "activity_label: ctx", gold, 4 endings).
  Its context is the original `ctx` already cleaned of some tags and without ctx_a / ctx_b apart, so lm-eval's
  `ctx_b.capitalize()` cannot be redone: the items are approximate (endings and golds match, contexts differ by
  the case of ctx_b), and every result read from it is labelled so.
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path
from typing import Any

from twossp_core.errors import DataError
from twossp_core.evaluation.zeroshot.items import Item, TaskItems, choice_requests, first
from twossp_core.evaluation.zeroshot.reading import hub_rows, read_jsonl

NAME = "hellaswag"
HUB = "Rowan/hellaswag"
ORIGINAL = "hellaswag_val.jsonl"
EXTRACTIONS = ("hellaswag_val_full.txt.bz2", "hellaswag_val_full.txt")
LINES_PER_ITEM = 6
APPROXIMATE_NOTE = (
    "read from the text extraction hellaswag_val_full.txt: the contexts are not lm-eval's exactly (ctx_b is not "
    "capitalised as lm-eval does), so the accuracies are close to, not equal to, lm-eval's; give the original "
    "hellaswag_val.jsonl for exact figures"
)
_TAG = re.compile(r"\[.*?\]")


def preprocess(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return _TAG.sub("", text).replace("  ", " ")


def item(doc: dict[str, Any]) -> Item:
    """An item from an original row."""
    context = preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
    endings = [preprocess(e) for e in doc["endings"]]
    return Item(requests=choice_requests(context, endings), gold=int(doc["label"]), choices=tuple(endings))


def extraction_items(path: Path, limit: int | None = None) -> tuple[list[Item], bool]:
    """Items from the text extraction: its context and endings through lm-eval's preprocess (approximate). Reading
    stops after `limit` items; returns (items, whether the whole file was read)."""
    opener: Any = bz2.open if path.suffix == ".bz2" else open
    items: list[Item] = []
    block: list[str] = []
    with opener(path, "rt", encoding="utf-8", newline="\n") as f:
        for number, line in enumerate(f, 1):
            block.append(line.removesuffix("\n"))
            if len(block) < LINES_PER_ITEM:
                continue
            context, gold, *endings = block
            block = []
            if gold.strip() not in ("0", "1", "2", "3"):
                raise DataError(f"hellaswag: {path}:{number - 4}: the gold label is {gold!r}, not 0-3")
            endings = [preprocess(e) for e in endings]
            items.append(Item(requests=choice_requests(preprocess(context), endings), gold=int(gold),
                              choices=tuple(endings)))
            if limit is not None and len(items) == limit:
                return items, False
    if any(block) or not items:
        raise DataError(f"hellaswag: {path} does not hold {LINES_PER_ITEM} lines per item")
    return items, True


def local_file(task: str, path: Path) -> Path | None:
    """The original jsonl when present, else the text extraction."""
    if path.is_file():
        return path
    for name in (ORIGINAL, *EXTRACTIONS):
        if (path / name).is_file():
            return path / name
    return None


def read_local(task: str, path: Path, limit: int | None) -> TaskItems:
    if path.suffix == ".jsonl":
        docs = read_jsonl(path)
        return TaskItems(name=task, items=[item(d) for d in first(docs, limit)], source=str(path), total=len(docs))
    items, whole = extraction_items(path, limit)
    return TaskItems(name=task, items=items, source=str(path), approximate=True, note=APPROXIMATE_NOTE,
                     total=len(items) if whole else None)


def read_hub(task: str, limit: int | None) -> TaskItems:
    docs = hub_rows(HUB, None, "validation")
    return TaskItems(name=task, items=[item(d) for d in first(docs, limit)], source=f"hub:{HUB}", total=len(docs))
