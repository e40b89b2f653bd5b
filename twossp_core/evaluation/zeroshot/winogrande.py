"""WinoGrande (lm-eval task `winogrande`, i.e. winogrande_xl; split validation = WinoGrande 1.1 dev, 1,267 items).

lm-eval 0.4 scores it partially: with i the index of "_" in the sentence, the two contexts are the sentence up to
the blank filled with option1 and with option2, and the shared continuation is the rest after the blank, stripped;
the prediction is the context under which that continuation is likelier; gold = answer - 1; acc only.
Local file: `dev.jsonl` ({"qID", "sentence", "option1", "option2", "answer"} per line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twossp_core.evaluation.zeroshot.items import TARGET_DELIMITER, Item, TaskItems, first
from twossp_core.evaluation.zeroshot.reading import hub_rows, read_jsonl

NAME = "winogrande"
HUB = "allenai/winogrande"
METRICS = ("acc",)


def item(doc: dict[str, Any]) -> Item:
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    continuation = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    return Item(requests=tuple((c, continuation) for c in contexts), gold={"1": 0, "2": 1}[str(doc["answer"])],
                choices=tuple(contexts))


def local_file(task: str, path: Path) -> Path | None:
    if path.is_file():
        return path
    return path / "dev.jsonl" if (path / "dev.jsonl").is_file() else None


def read_local(task: str, path: Path, limit: int | None) -> TaskItems:
    docs = read_jsonl(path)
    return TaskItems(name=task, items=[item(d) for d in first(docs, limit)], source=str(path), metrics=METRICS,
                     total=len(docs))


def read_hub(task: str, limit: int | None) -> TaskItems:
    docs = hub_rows(HUB, "winogrande_xl", "validation")
    return TaskItems(name=task, items=[item(d) for d in first(docs, limit)], source=f"hub:{HUB}/winogrande_xl",
                     metrics=METRICS, total=len(docs))
