"""lm-eval-harness run on the same local task files, as the reference this package's scorer is checked against
(tests/core/test_zeroshot_lm_eval.py) and timed against (bench/zeroshot.py). Needs the zeroshot extra.

lm-eval's own task configurations are used unchanged (each local config `include`s the installed task YAML) except
for where the data comes from: a local JSON-lines file instead of the Hub. Where the local files are not in the Hub
schema lm-eval's configuration expects, they are rewritten into it first (PIQA: the labels file merged into the
rows; MMLU: each subject's CSV as rows of question, choices, answer). HellaSwag needs the original
hellaswag_val.jsonl: lm-eval cannot read the text extraction.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twossp_core.errors import DataError, InvalidSpec
from twossp_core.evaluation.zeroshot.mmlu import SUBJECTS, description
from twossp_core.evaluation.zeroshot.sources import TaskData, local_source

PREFIX = "twossp_"


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise InvalidSpec("the lm-eval reference needs lm-eval-harness: pip install 'twossp[zeroshot]'") from None


def _task_yaml(task: str) -> Path:
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    return {
        "arc_easy": root / "arc" / "arc_easy.yaml", "arc_challenge": root / "arc" / "arc_challenge.yaml",
        "piqa": root / "piqa" / "piqa.yaml", "winogrande": root / "winogrande" / "default.yaml",
        "hellaswag": root / "hellaswag" / "hellaswag.yaml",
        "mmlu": root / "mmlu" / "default" / "_default_template_yaml",
    }[task]


def _split(task: str) -> str:
    return "test" if task in ("arc_easy", "arc_challenge", "mmlu") else "validation"


def _write_config(work: Path, name: str, task: str, data_file: Path, extra: dict[str, Any] | None = None) -> None:
    split = _split(task)
    config = {
        "include": str(_task_yaml(task)), "task": name, "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data_file)}}, "tag": [], **(extra or {}),
    }
    if split == "validation":
        config["training_split"] = None
    else:
        config.update(training_split=None, validation_split=None, fewshot_split=None)
    (work / f"{name}.yaml").write_text(json.dumps(config, indent=1))  # JSON is YAML


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_configs(tasks: list[str], work: Path, data: TaskData) -> dict[str, list[str]]:
    """Write lm-eval task configurations reading the local files `data` gives into `work`; returns, per task, the
    lm-eval task names it runs as (one per MMLU subject)."""
    work.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {}
    for task in tasks:
        found = local_source(task, data)
        if found is None:
            raise DataError(f"task {task}: the lm-eval reference reads local files only")
        source = data.open_path(found)
        if task in ("arc_easy", "arc_challenge", "winogrande"):
            _write_config(work, PREFIX + task, task, source)
            names[task] = [PREFIX + task]
        elif task == "hellaswag":
            if source.suffix != ".jsonl":
                raise DataError(f"hellaswag: lm-eval reads the original hellaswag_val.jsonl, not {source.name}")
            _write_config(work, PREFIX + task, task, source)
            names[task] = [PREFIX + task]
        elif task == "piqa":
            rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
            labels = source.with_name(source.name.replace(".jsonl", "-labels.lst")).read_text().split()
            merged = _write_jsonl(work / "piqa.jsonl", [{**r, "label": int(x)} for r, x in zip(rows, labels,
                                                                                                strict=True)])
            _write_config(work, PREFIX + task, task, merged)
            names[task] = [PREFIX + task]
        elif task == "mmlu":
            names[task] = []
            for subject in SUBJECTS:
                with open(source / f"{subject}_test.csv", encoding="utf-8", newline="") as f:
                    rows = list(csv.reader(f))
                if rows and rows[0][0] == "question":
                    rows = [{"question": r[0], "choices": r[1:5], "answer": int(r[5])} for r in rows[1:]]
                else:
                    rows = [{"question": r[0], "choices": r[1:5], "answer": "ABCD".index(r[5].strip())} for r in rows]
                file = _write_jsonl(work / f"mmlu_{subject}.jsonl", rows)
                name = f"{PREFIX}mmlu_{subject}"
                _write_config(work, name, task, file, {"description": description(subject)})
                names[task].append(name)
    return names


@dataclass
class Reference:
    loglikelihoods: dict[str, list[list[float]]]  # per task, per item (file order; MMLU subjects in order)
    metrics: dict[str, dict[str, float]]  # per task, lm-eval's acc[, acc_norm] (MMLU: weighted by subject size)


def hellaswag_rows_from_extraction(extraction: Path, count: int) -> list[dict[str, Any]]:
    """Rows in the original hellaswag_val.jsonl schema made from the first `count` items of the text extraction,
    so lm-eval can read them (the original file is not in the shared data): the activity label is the text before
    the first ": " and ctx_b the context's last sentence fragment (so lm-eval's ctx_b.capitalize() has work to
    do). The split is made up: these rows are for comparing scorers, not HellaSwag's own."""
    import bz2

    rows = []
    with bz2.open(extraction, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for _, line in zip(range(count * 6), f, strict=False)]
    for start in range(0, len(lines) - 5, 6):
        head, label, *endings = lines[start : start + 6]
        activity, _, ctx = head.partition(": ")
        cut = ctx.rfind(". ")
        ctx_a, ctx_b = (ctx[: cut + 1], ctx[cut + 2 :]) if cut >= 0 else (ctx, "")
        rows.append({"activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b, "endings": endings, "label": label})
    return rows


def run_lm_eval(
    model: Any, tokenizer: Any, tasks: list[str], limit: int | None, work: Path, *, data: TaskData,
    batch_size: int = 8,
) -> Reference:
    """lm-eval's HF backend on the in-memory model, on the local files `data` gives: per task the log-likelihood of
    each request of each item, and the accuracies lm-eval reports."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = write_configs(tasks, work, data)
    manager = TaskManager(include_path=str(work), include_defaults=False)
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    flat = [n for task in tasks for n in names[task]]
    results = simple_evaluate(model=lm, tasks=flat, num_fewshot=0, limit=limit, log_samples=True,
                              task_manager=manager, bootstrap_iters=0)
    assert results is not None
    lls: dict[str, list[list[float]]] = {}
    metrics: dict[str, dict[str, float]] = {}
    for task in tasks:
        lls[task] = []
        sums: dict[str, float] = {}
        for name in names[task]:
            samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
            lls[task] += [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
            for key, value in results["results"][name].items():
                metric = key.split(",")[0]
                if metric in ("acc", "acc_norm"):
                    sums[metric] = sums.get(metric, 0.0) + float(value) * len(samples)
        metrics[task] = {metric: total / len(lls[task]) for metric, total in sums.items()}
    return Reference(lls, metrics)
