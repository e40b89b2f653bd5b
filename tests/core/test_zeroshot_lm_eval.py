"""The zero-shot scorer against lm-eval-harness itself: the same model, the same items read from the same local
files, identical per-request log-likelihoods (to float tolerance) and identical accuracies, for the six tasks."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require_data

from twossp_core.evaluation.zeroshot.evaluate import loglikelihoods_per_task, prepare_tasks
from twossp_core.evaluation.zeroshot.metrics import accuracies
from twossp_core.evaluation.zeroshot.sources import TaskData
from twossp_core.models.registry import adapter_for
from twossp_core.plan.tasks import PAPER_TASKS

pytest.importorskip("lm_eval")

LIMIT = 4  # items per task (per MMLU subject: 228 MMLU items, some longer than the model's context)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = require_data("models", "c4llama-8l")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.mark.slow
def test_scores_equal_lm_eval_on_the_six_tasks(model_and_tokenizer, tmp_path):
    from twossp_core.evaluation.zeroshot.reference import hellaswag_rows_from_extraction, run_lm_eval

    model, tokenizer = model_and_tokenizer
    tasks_dir = require_data("tasks")
    hellaswag = tmp_path / "hellaswag"
    hellaswag.mkdir()
    rows = hellaswag_rows_from_extraction(tasks_dir / "hellaswag" / "hellaswag_val_full.txt.bz2", LIMIT)
    (hellaswag / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = TaskData(root=tasks_dir, paths={"hellaswag": hellaswag})
    tasks = list(PAPER_TASKS)

    prepared = prepare_tasks(tokenizer, model.config, dict.fromkeys(tasks, LIMIT), data)
    assert not any(p.task.approximate for p in prepared)
    ours = loglikelihoods_per_task(adapter_for(model), prepared)
    reference = run_lm_eval(model, tokenizer, tasks, LIMIT, tmp_path / "lm-eval", data=data)

    for p, values in zip(prepared, ours, strict=True):
        task = p.task.name
        theirs = reference.loglikelihoods[task]
        assert len(values) == len(theirs) == (LIMIT * 57 if task == "mmlu" else LIMIT)
        for mine, expected in zip(values, theirs, strict=True):
            assert mine == pytest.approx(expected, rel=1e-5, abs=1e-4), task
        scores = accuracies(p.task.items, values, p.task.metrics)
        for metric, value in reference.metrics[task].items():
            assert scores[metric] == pytest.approx(value, abs=1e-12), (task, metric)
        assert set(reference.metrics[task]) == set(p.task.metrics)
