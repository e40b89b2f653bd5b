"""Zero-shot tasks in jobs: `--tasks`/`--task-limit` on prune, eval and sweep, the report's `zero_shot` block (dense
and pruned on the same items), progress stages, the summary, the sweep comparison, refusals of bad input, and runs
in one process each reading the task data it was handed."""

from __future__ import annotations

import json
import math
import statistics
import threading
from pathlib import Path

import pytest
import torch
from conftest import require_data

from twossp_core.cli.main import main
from twossp_core.errors import InvalidSpec
from twossp_core.evaluation.zeroshot.evaluate import prepare_tasks, score_tasks
from twossp_core.evaluation.zeroshot.sources import TaskData
from twossp_core.models.registry import adapter_for
from twossp_core.plan.spec import JobSpecBase, parse_spec, parse_sweep_spec
from twossp_core.plan.stages import prune_stages

TASKS = ["winogrande", "arc_easy", "hellaswag"]
LIMIT = 8


@pytest.fixture(scope="module")
def task_dir():
    return require_data("tasks")


def data_args(stories_text):
    return ["--calibration", f"{stories_text}:0:100", "--calibration-windows", "4", "--eval",
            f"{stories_text}:500:600", "--doc-separator", "<|endoftext|>", "--seq-len", "256", "--no-throughput",
            "--no-progress"]


def scores_of(model_dir, task_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prepared = prepare_tasks(AutoTokenizer.from_pretrained(model_dir), model.config, dict.fromkeys(TASKS, LIMIT),
                             TaskData(root=task_dir))
    return score_tasks(adapter_for(model), prepared)


@pytest.mark.slow
def test_prune_reports_dense_and_pruned_accuracy_on_the_same_items(stories_model, stories_text, task_dir, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"
    code = main(["prune", "--model", str(stories_model), "--sparsity", "0.375", *data_args(stories_text),
                 "--tasks", ",".join(TASKS), "--task-limit", str(LIMIT), "--task-data", str(task_dir),
                 "--export", "portable", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    block = json.loads((out / "report.json").read_text())["zero_shot"]
    assert block["limit"] == LIMIT and block["approximate"] is True
    assert list(block["tasks"]) == TASKS
    for name, entry in block["tasks"].items():
        assert entry["n"] == LIMIT and entry["approximate"] == (name == "hellaswag")
        for label in ("dense", "pruned"):
            for metric in entry["metrics"]:
                p = entry[label][metric]
                assert entry[label][f"{metric}_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (LIMIT - 1)))
    # the scores are those of the dense model and of the saved pruned model on these items
    dense, pruned = scores_of(stories_model, task_dir), scores_of(out, task_dir)
    for name, entry in block["tasks"].items():
        paired = {k: v for k, v in entry["pruned"].items() if "_delta" in k}
        unpaired = {k: v for k, v in entry["pruned"].items() if "_delta" not in k}
        assert entry["dense"] == pytest.approx(dense[name]) and unpaired == pytest.approx(pruned[name])
        # the pruned model against the dense one item by item: the difference and its paired standard error
        for metric in entry["metrics"]:
            hits = [(int(a), int(b)) for a, b in zip(entry["dense"][f"{metric}_per_item"],
                                                   entry["pruned"][f"{metric}_per_item"], strict=True)]
            assert len(hits) == LIMIT
            assert paired[f"{metric}_delta"] == pytest.approx(entry["pruned"][metric] - entry["dense"][metric])
            assert paired[f"{metric}_delta_stderr"] == pytest.approx(
                statistics.stdev(b - a for a, b in hits) / math.sqrt(LIMIT))
    assert "(Δ " in printed
    assert block["average_acc"]["pruned"] == pytest.approx(sum(pruned[t]["acc"] for t in TASKS) / len(TASKS))
    assert "zero-shot accuracy (dense -> pruned" in printed and "hellaswag* acc_norm" in printed
    assert "approximate: read from the text extraction" in printed


@pytest.mark.slow
def test_progress_has_the_zero_shot_stages(stories_model, stories_text, task_dir, tmp_path):
    from twossp_core.pipeline import run_prune

    spec = parse_spec({"model": str(stories_model), "sparsity": 0.25, "calibration": [f"{stories_text}:0:50"],
                       "eval": [f"{stories_text}:500:520"], "calibration_windows": 2, "seq_len": 128,
                       "doc_separator": "<|endoftext|>", "measure_throughput": False, "tasks": ["winogrande"],
                       "task_limit": 3})
    seen: list[str] = []
    run_prune(spec.with_task_data(TaskData(root=task_dir)), tmp_path / "o",
              progress=lambda stage, f: seen.append(stage))
    entered = [stage for i, stage in enumerate(seen) if i == 0 or seen[i - 1] != stage]
    assert entered == [s.name for s in prune_stages(spec)]
    assert {"zero_shot_dense", "zero_shot_pruned"} <= set(entered)


@pytest.mark.slow
def test_eval_prints_the_accuracy(stories_model, stories_text, task_dir, capsys):
    code = main(["eval", "--model", str(stories_model), "--eval", f"{stories_text}:500:510", "--doc-separator",
                 "<|endoftext|>", "--seq-len", "128", "--no-throughput", "--no-progress", "--tasks", "winogrande",
                 "--task-limit", "4", "--task-file", f"winogrande={task_dir / 'winogrande' / 'dev.jsonl'}", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    entry = result["zero_shot"]["tasks"]["winogrande"]
    assert entry["n"] == 4 and entry["source"].endswith("dev.jsonl") and "pruned" not in entry


def test_eval_of_tasks_alone_needs_no_text(stories_model, task_dir, capsys, monkeypatch):
    """`twossp eval --tasks` without `--eval` scores the tasks only: no perplexity set (the default one is a Hub
    dataset, which an offline machine cannot read), no throughput (it times a text window)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["eval", "--model", str(stories_model), "--no-progress", "--tasks", "winogrande", "--task-limit", "2",
                 "--task-file", f"winogrande={task_dir / 'winogrande' / 'dev.jsonl'}", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == [] and result["throughput_tokens_per_s"] is None
    assert result["zero_shot"]["tasks"]["winogrande"]["n"] == 2


def test_a_task_can_have_its_own_limit(stories_model, task_dir, capsys, monkeypatch):
    """`--task-limit 2,arc_easy=3`: the first 2 items of every task but arc_easy, of which the first 3; the report
    says which, per task and in words."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["eval", "--model", str(stories_model), "--no-progress", "--tasks", "winogrande,arc_easy",
                 "--task-limit", "2,arc_easy=3", "--task-data", str(task_dir), "--json"])
    assert code == 0
    block = json.loads(capsys.readouterr().out)["zero_shot"]
    tasks = block["tasks"]
    assert (tasks["winogrande"]["n"], tasks["winogrande"]["limit"]) == (2, 2)
    assert (tasks["arc_easy"]["n"], tasks["arc_easy"]["limit"]) == (3, 3)
    assert block["limit"] == 2 and block["subset"].startswith("first 2 items per task")
    assert block["subset"].endswith("; arc_easy: first 3")
    assert len(tasks["arc_easy"]["dense"]["acc_per_item"]) == 3


@pytest.mark.slow
def test_sweep_compares_the_accuracy(stories_model, stories_text, task_dir, tmp_path):
    out = tmp_path / "sweep"
    code = main(["sweep", "--model", str(stories_model), "--methods", "2ssp,shortgpt", "--sparsities", "0.25",
                 *data_args(stories_text), "--tasks", "winogrande,hellaswag", "--task-limit", "4", "--task-data",
                 str(task_dir), "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "comparison.json").read_text())
    dense = json.loads((out / "sweep.json").read_text())["dense"]["zero_shot"]
    assert [r["zero_shot"]["tasks"]["winogrande"]["n"] for r in rows] == [4, 4]
    table = (out / "comparison.md").read_text()
    assert "| method | target | achieved | winogrande | hellaswag* | average* |" in table
    dense_cell = f"{dense['tasks']['winogrande']['dense']['acc']:.4f}"
    assert f"| dense | — | — | {dense_cell} |" in table
    for r in rows:
        assert f"| {r['method']} | 25.0% |" in table
        assert f"{r['zero_shot']['tasks']['winogrande']['pruned']['acc']:.4f}" in table
    assert "Approximate — read from the text extraction" in table


def test_bad_task_input_is_refused_in_one_line(stories_model, tmp_path, capsys):
    base = ["eval", "--model", str(stories_model), "--eval", str(tmp_path / "t.txt"), "--no-progress"]
    (tmp_path / "t.txt").write_text("hello world " * 200)
    assert main([*base, "--tasks", "piqa,boolq"]) == 2
    assert "unknown zero-shot task 'boolq'" in capsys.readouterr().err
    assert main([*base, "--tasks", "piqa", "--task-file", "piqa"]) == 2
    assert "--task-file expects TASK=PATH" in capsys.readouterr().err
    assert main([*base, "--tasks", "piqa", "--task-data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and "Loading" not in err
    assert main([*base, "--tasks", "piqa", "--task-limit", "0"]) == 2
    assert "--task-limit" in capsys.readouterr().err
    assert main([*base, "--tasks", "piqa", "--task-limit", "piqa=0"]) == 2
    assert "--task-limit piqa: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main([*base, "--tasks", "piqa", "--task-limit", "mmlu=5"]) == 2
    assert "--task-limit mmlu: 'mmlu' is not a task of this job (the job's tasks are piqa)" in capsys.readouterr().err
    assert main([*base, "--tasks", "piqa", "--task-limit", "5", "--task-limit", "6"]) == 2
    assert "--task-limit: two limits for every task (5 and 6)" in capsys.readouterr().err
    assert main([*base, "--tasks", "piqa", "--task-limit", "piqa=2,=3"]) == 2
    assert "--task-limit: '=3' is neither N nor TASK=N" in capsys.readouterr().err


def test_request_fields():
    base = {"model": "m", "sparsity": 0.5}
    assert parse_spec({**base, "tasks": ["paper"]}).tasks == [
        "winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu"]
    assert parse_spec({**base, "tasks": "piqa,mmlu"}).tasks == ["piqa", "mmlu"]
    assert parse_spec({**base, "tasks": ["piqa"]}, strict=True).tasks == ["piqa"]
    with pytest.raises(InvalidSpec, match="tasks: must be a JSON array"):
        parse_spec({**base, "tasks": "piqa"}, strict=True)
    with pytest.raises(InvalidSpec, match="tasks: unknown zero-shot task"):
        parse_sweep_spec({"model": "m", "sparsities": [0.5], "tasks": ["nope"]})
    assert parse_spec(base).tasks == [] and parse_spec(base).task_limit is None
    # a task's own limit, over the one for every task
    spec = parse_spec({**base, "tasks": ["paper"], "task_limit": 100, "task_limits": {"mmlu": 5}}, strict=True)
    assert spec.task_limit_map() == {**dict.fromkeys(spec.tasks, 100), "mmlu": 5}
    assert parse_spec({**base, "tasks": ["piqa", "mmlu"], "task_limits": {"mmlu": 5}}).task_limit_map() == {
        "piqa": None, "mmlu": 5}
    for limits, field, message in (({"mmlu": 0}, "task_limits.mmlu", "greater than or equal to 1"),
                                   ({"mmlu": "5"}, "task_limits.mmlu", "valid integer"),
                                   ({"boolq": 5}, "task_limits.boolq", "'boolq' is not a task of this job")):
        with pytest.raises(InvalidSpec, match=message) as caught:
            parse_spec({**base, "tasks": ["piqa", "mmlu"], "task_limits": limits}, strict=True)
        assert [p.field for p in caught.value.problems] == [field]
    with pytest.raises(InvalidSpec, match="the job scores no task"):
        parse_sweep_spec({"model": "m", "sparsities": [0.5], "task_limits": {"piqa": 3}})


def winogrande_dir(root: Path, word: str) -> Path:
    """A task data directory whose WinoGrande items all say `word`."""
    rows = [{"qID": f"{word}-{k}", "sentence": f"The {word} trophy did not fit in _ number {k}.", "option1": "the case",
             "option2": "the bag", "answer": "1"} for k in range(3)]
    (root / "winogrande").mkdir(parents=True)
    (root / "winogrande" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_two_evaluations_in_one_process_read_their_own_task_data(stories_model, stories_text, tmp_path, monkeypatch):
    """Two evaluations at once in one process (two threads), each handed its own task data directory: each finds
    and reads its own files, however their steps interleave (both are under way before either looks for a file)."""
    from twossp_core import pipeline
    from twossp_core.evaluation.zeroshot import winogrande
    from twossp_core.progress import Reporter

    monkeypatch.delenv("TWOSSP_TASK_DATA", raising=False)
    words = ("golden", "silver")
    data = {word: TaskData(root=winogrande_dir(tmp_path / word, word)) for word in words}
    barrier = threading.Barrier(2, timeout=60)
    local_file = winogrande.local_file

    def in_step(task: str, path: Path) -> Path | None:
        barrier.wait()  # each lookup of a task file (the check, then the reading) waits for the other evaluation
        return local_file(task, path)

    monkeypatch.setattr(winogrande, "local_file", in_step)
    # transformers' loading is not thread-safe (its meta-device initialisation is process-wide): one load at a time,
    # between the two lookups
    loading, load_for_plan = threading.Lock(), pipeline.load_for_plan

    def one_load_at_a_time(*args, **kwargs):
        with loading:
            return load_for_plan(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_for_plan", one_load_at_a_time)
    spec = JobSpecBase(model=str(stories_model), eval=[f"{stories_text}:500:510"], doc_separator="<|endoftext|>",
                       seq_len=64, eval_windows=1, measure_throughput=False, tasks=["winogrande"], task_limit=2)
    read: dict[str, object] = {}
    errors: list[BaseException] = []

    def evaluate(word: str) -> None:
        try:
            ws = pipeline.prepare(spec.with_task_data(data[word]), Reporter(), with_calibration=False)
            read[word] = (ws.zero_shot_tasks[0].task, ws.dense_zero_shot["winogrande"])
        except BaseException as exc:  # reported below; the other thread must not wait for this one
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=evaluate, args=(word,)) for word in words]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for word in words:
        task, scores = read[word]
        assert task.source == str(tmp_path / word / "winogrande" / "dev.jsonl")
        assert len(task.items) == 2 and all(f"The {word} trophy" in context for item in task.items
                                            for context, _ in item.requests)
        assert set(scores) >= {"acc", "acc_stderr"}
    assert spec.task_data() == TaskData()  # the spec itself reads TWOSSP_TASK_DATA (unset here)
