"""MMLU (lm-eval group `mmlu`, 0-shot; split test, 14,042 items over 57 subjects).

lm-eval 0.4 runs one task per subject: the context is the subject's description "The following are multiple choice
questions (with answers) about {subject with spaces}.\\n\\n" followed by "{question stripped}\\nA. {choice 0}\\nB. ...
\\nD. {choice 3}\\nAnswer:", the continuations " A" .. " D", gold = answer (0-3); acc only. The group's accuracy is
the mean over subjects weighted by their sizes, i.e. over all items. A limit takes the first N items of every
subject, as lm-eval's --limit does for a group.

Local files: `<subject>_test.csv` for the 57 subjects, in the task directory, its `test/` or its `data/test/`; either
with the header "question,choice0,choice1,choice2,choice3,answer" and answers 0-3 (the `cais/mmlu` convention) or
headerless with answers A-D (the original hendrycks/test release).
"""

from __future__ import annotations

import csv
from pathlib import Path

from twossp_core.errors import DataError
from twossp_core.evaluation.zeroshot.items import Item, TaskItems, choice_requests, first
from twossp_core.evaluation.zeroshot.reading import hub_rows

NAME = "mmlu"
HUB = "cais/mmlu"
METRICS = ("acc",)
LETTERS = ("A", "B", "C", "D")
HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


def description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def item(subject: str, question: str, choices: list[str], answer: int) -> Item:
    body = question.strip() + "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=True))
    return Item(requests=choice_requests(description(subject) + body + "\nAnswer:", list(LETTERS)), gold=answer,
                choices=LETTERS, group=subject)


def read_csv(subject: str, path: Path) -> list[Item]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] == HEADER:
        rows, letters = rows[1:], False
    else:
        letters = True
    items = []
    for number, row in enumerate(rows, 2 if not letters else 1):
        if len(row) != 6:
            raise DataError(f"mmlu: {path}:{number}: {len(row)} fields, expected 6")
        question, *choices, answer = row
        try:
            gold = LETTERS.index(answer.strip()) if letters else int(answer)
        except ValueError:
            gold = -1
        if not 0 <= gold < 4:
            raise DataError(f"mmlu: {path}:{number}: answer {answer!r} is not {'A-D' if letters else '0-3'}")
        items.append(item(subject, question, choices, gold))
    if not items:
        raise DataError(f"mmlu: {path}: no items")
    return items


def local_file(task: str, path: Path) -> Path | None:
    """The directory holding the subjects' test CSVs."""
    for candidate in (path, path / "test", path / "data" / "test"):
        if candidate.is_dir() and any(candidate.glob("*_test.csv")):
            return candidate
    return None


def read_local(task: str, path: Path, limit: int | None) -> TaskItems:
    missing = [s for s in SUBJECTS if not (path / f"{s}_test.csv").is_file()]
    if missing:
        raise DataError(f"mmlu: {path} lacks {len(missing)} of the 57 subjects: {', '.join(missing[:5])}"
                        + (", ..." if len(missing) > 5 else ""))
    items: list[Item] = []
    total = 0
    for subject in SUBJECTS:
        subject_items = read_csv(subject, path / f"{subject}_test.csv")
        total += len(subject_items)
        items += first(subject_items, limit)
    return TaskItems(name=task, items=items, source=str(path), metrics=METRICS, total=total, groups=list(SUBJECTS))


def read_hub(task: str, limit: int | None) -> TaskItems:
    items: list[Item] = []
    total = 0
    for subject in SUBJECTS:
        rows = hub_rows(HUB, subject, "test")
        total += len(rows)
        items += [item(subject, r["question"], list(r["choices"]), int(r["answer"])) for r in first(rows, limit)]
    return TaskItems(name=task, items=items, source=f"hub:{HUB}", metrics=METRICS, total=total,
                     groups=list(SUBJECTS))
