"""The worker's view of a job's local inputs (worker/inputs.py): files opened first, checked where they really
are, and read through links to the open files, so a path swapped afterwards is never followed. The job is handed
`spec.with_opened(pinned.opened)`: each input says where to open it, and only that spec's readers see those paths.
The zero-shot tasks' local files (the worker's task data) are opened with them (`pinned.job_spec(spec)`)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from service.paths import PathRefused
from twossp_core.data.sources import iter_documents
from twossp_core.evaluation.zeroshot.mmlu import SUBJECTS
from twossp_core.evaluation.zeroshot.sources import check_sources, load_task, local_source
from twossp_core.export.source_files import source_json, source_name, source_sha256
from twossp_core.plan.cost import source_tokens
from twossp_core.plan.spec import JobSpecBase, SweepSpec
from twossp_core.plan.tasks import TaskData
from twossp_core.preflight import check_data, local_config
from worker.inputs import pinned_inputs


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """An allowed root with a model directory and a data file, and a directory outside it."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    model = allowed / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"inside": true}')
    (model / "model.safetensors").write_bytes(b"inside weights")
    (model / "sub" / "extra.json").write_text("{}")
    (allowed / "text.txt").write_text("inside a<s>inside b")
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"outside weights")
    (outside / "text.txt").write_text("outside")
    return allowed, outside


def spec_for(allowed: Path) -> JobSpecBase:
    return JobSpecBase(model=str(allowed / "model"), calibration=[f"{allowed / 'text.txt'}:0:2"], eval=["wikitext2"])


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_files_swapped_for_links_after_the_check_are_not_followed(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    allowed, outside = tree
    model, text = allowed / "model", allowed / "text.txt"
    spec = spec_for(allowed)
    before = open_fds()
    with pinned_inputs(spec, [allowed], tmp_path / "inputs") as pinned:
        assert set(pinned.opened) == {str(model), str(text)}  # the hub dataset is not a local input
        job = spec.with_opened(pinned.opened)
        for path in (model / "model.safetensors", text):
            path.unlink()
            path.symlink_to(outside / path.name)
        assert (model / "model.safetensors").read_bytes() == b"outside weights"  # the swap is real
        source = job.model_input()
        assert source.name == str(model)  # named as the spec named it, opened where it was checked
        view = source.open_path
        assert view != model and view.name == "model"
        assert (view / "model.safetensors").read_bytes() == b"inside weights"
        assert (view / "config.json").read_text() == '{"inside": true}'
        assert (view / "sub" / "extra.json").read_text() == "{}"
        # the readers open what they are handed
        assert local_config(source) == {"inside": True}
        assert source_json(source, "config.json") == {"inside": True}
        assert source_sha256(source) == (hashlib.sha256(b"inside weights").hexdigest(), "model.safetensors")
        calibration, evaluation = job.calibration_sources(), job.eval_sources()
        assert [s.label for s in calibration] == [f"{text}:0:2"] and [s.label for s in evaluation] == ["wikitext2"]
        assert list(iter_documents(calibration[0], "calibration", "<s>")) == ["inside a", "inside b"]
        check_data(calibration, "<s>")
        assert source_tokens(calibration[0], 8, None) == len("inside a<s>inside b")
        # the request, its dump and what a card calls the model keep the spec's names: the directory named
        # "model" (a generic name) is called after its parent, as the spec's path says, not after the copy
        assert job == spec.with_opened(pinned.opened) and job.model_dump() == spec.model_dump()
        assert source_name(source) == "allowed"
    assert open_fds() == before  # every file opened for the job is closed again
    # the spec itself still opens every input at its name
    assert spec.model_input().open_path == model and spec.model_input().path is None
    assert spec.calibration_sources()[0].open_path == text


def test_two_runs_with_the_same_name_read_their_own_pinned_files(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    """Two jobs in one process name the same model and data file, pinned at different times (the files were
    replaced in between): each job reads what was pinned for it, however their reads interleave."""
    allowed, _ = tree
    model, text = allowed / "model", allowed / "text.txt"
    spec = spec_for(allowed)
    with pinned_inputs(spec, [allowed], tmp_path / "first") as first:
        first_job = spec.with_opened(first.opened)
        for path, content in ((model / "model.safetensors", b"second weights"), (text, b"second a<s>second b")):
            path.unlink()  # a new file under the same name, inside the roots
            path.write_bytes(content)
        with pinned_inputs(spec, [allowed], tmp_path / "second") as second:
            second_job = spec.with_opened(second.opened)
            barrier = threading.Barrier(2)
            seen: dict[str, set[tuple[tuple[str, ...], bytes, str | None]]] = {"first": set(), "second": set()}

            def run(label: str, job: JobSpecBase) -> None:
                barrier.wait()  # both runs hold their spec before either reads
                for _ in range(20):
                    docs = tuple(iter_documents(job.calibration_sources()[0], "calibration", "<s>"))
                    weights = (job.model_input().open_path / "model.safetensors").read_bytes()
                    seen[label].add((docs, weights, (source_sha256(job.model_input()) or (None,))[0]))

            threads = [threading.Thread(target=run, args=(label, job))
                       for label, job in (("first", first_job), ("second", second_job))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert seen == {
                "first": {(("inside a", "inside b"), b"inside weights", hashlib.sha256(b"inside weights").hexdigest())},
                "second": {(("second a", "second b"), b"second weights",
                            hashlib.sha256(b"second weights").hexdigest())},
            }
            # a sweep's cells, and a copy with other budgets, keep the paths their spec was given
            sweep = SweepSpec(model=str(model), calibration=spec.calibration, sparsities=[0.25], methods=["2ssp"])
            pinned_model = first.opened[str(model)]
            cell = sweep.with_opened(first.opened).prune_spec("2ssp", 0.25)
            assert cell.model_input().open_path == pinned_model
            assert cell.model_copy(update={"max_host_memory": 2**30}).model_input().open_path == pinned_model
            assert sweep.prune_spec("2ssp", 0.25).model_input().path is None


def test_links_out_of_the_roots_and_special_files_are_refused(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    allowed, outside = tree
    model = allowed / "model"
    weights = model / "model.safetensors"
    weights.unlink()
    weights.symlink_to(outside / "model.safetensors")
    with pytest.raises(PathRefused, match="model.safetensors links outside the allowed roots"):
        with pinned_inputs(spec_for(allowed), [allowed], tmp_path / "a"):
            pass
    weights.unlink()
    os.mkfifo(weights)  # opening a FIFO for reading would wait for a writer forever
    started = time.monotonic()
    with pytest.raises(PathRefused, match="model.safetensors is not a regular file"):
        with pinned_inputs(spec_for(allowed), [allowed], tmp_path / "b"):
            pass
    assert time.monotonic() - started < 5
    weights.unlink()
    weights.write_bytes(b"inside weights")

    linked = allowed / "linked-model"
    linked.symlink_to(outside, target_is_directory=True)
    for spec, message in [
        ({"model": str(linked)}, "inside TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ({"model": "org/name", "calibration": [str(allowed)]}, "not a regular file"),
        ({"model": "org/name", "calibration": ["relative/text.txt"]}, "must be absolute"),
        ({"model": "org/name", "eval": [str(outside / "text.txt")]}, "inside TWOSSP_ALLOWED_LOCAL_ROOTS"),
    ]:
        with pytest.raises(PathRefused, match=message):
            with pinned_inputs(JobSpecBase.model_validate(spec), [allowed], tmp_path / f"c{len(message)}"):
                pass


def test_hidden_entries_and_dangling_links_are_left_out(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    allowed, _ = tree
    model = allowed / "model"
    (model / ".cache").mkdir()
    (model / ".cache" / "lock").write_text("")
    (model / "gone.json").symlink_to(allowed / "no-such-file")
    with pinned_inputs(JobSpecBase(model=str(model)), [allowed], tmp_path / "inputs") as pinned:
        view = pinned.opened[str(model)]
        assert sorted(p.name for p in view.iterdir()) == ["config.json", "model.safetensors", "sub"]


def write_tasks(tasks: Path, word: str) -> None:
    """WinoGrande (one file), PIQA (a file and its labels beside it) and MMLU (a folder of CSVs) saying `word`."""
    for name in ("winogrande", "piqa", "mmlu"):
        (tasks / name).mkdir(parents=True, exist_ok=True)
    row = {"sentence": f"{word} _ here.", "option1": "a", "option2": "b", "answer": "1"}
    (tasks / "winogrande" / "dev.jsonl").write_text(json.dumps(row) + "\n")
    (tasks / "piqa" / "valid.jsonl").write_text(json.dumps({"goal": word, "sol1": "x", "sol2": "y"}) + "\n")
    (tasks / "piqa" / "valid-labels.lst").write_text("1\n" if word == "opened" else "0\n")
    for subject in SUBJECTS:
        (tasks / "mmlu" / f"{subject}_test.csv").write_text(f"{word},a,b,c,d,A\n")


def test_task_files_are_read_where_they_were_opened(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    """The zero-shot tasks' local files, where the worker's task data says (outside the allowed roots: the request
    does not name them), are looked up and opened with the job's other inputs: the job reads those files, names
    them as found, and does not read a task folder that appears later."""
    allowed, _ = tree
    tasks = tmp_path / "tasks"
    write_tasks(tasks, "opened")
    wino, piqa, mmlu = tasks / "winogrande" / "dev.jsonl", tasks / "piqa" / "valid.jsonl", tasks / "mmlu"
    spec = JobSpecBase(model=str(allowed / "model"), tasks=["winogrande", "piqa", "mmlu", "arc_easy"])
    spec = spec.with_task_data(TaskData(root=tasks))
    before = open_fds()
    with pinned_inputs(spec, [allowed], tmp_path / "inputs") as pinned:
        assert set(pinned.opened) == {str(allowed / "model"), str(wino), str(piqa), str(mmlu)}
        assert pinned.task_data == TaskData(paths={"winogrande": wino, "piqa": piqa, "mmlu": mmlu})
        job = pinned.job_spec(spec)
        for path in [wino, piqa, piqa.with_name("valid-labels.lst"), *mmlu.iterdir()]:
            path.unlink()  # new files under the same names
        write_tasks(tasks, "swapped")
        (tasks / "arc_easy").mkdir()
        (tasks / "arc_easy" / "test.jsonl").write_text("not read")
        data = job.task_data()
        assert check_sources(["winogrande", "piqa", "mmlu"], data) == {
            "winogrande": str(wino), "piqa": str(piqa), "mmlu": str(mmlu)}
        assert local_source("arc_easy", data) is None  # no local data when the inputs were opened: the Hub
        read = {task: load_task(task, None, data) for task in ("winogrande", "piqa", "mmlu")}
        assert {task: items.source for task, items in read.items()} == {
            "winogrande": str(wino), "piqa": str(piqa), "mmlu": str(mmlu)}
        assert read["winogrande"].items[0].requests[0][0] == "opened a"
        assert read["piqa"].items[0].requests[0][0] == "Question: opened\nAnswer:" and read["piqa"].items[0].gold == 1
        assert len(read["mmlu"].items) == 57 and all("\n\nopened\nA. a" in i.requests[0][0] for i in read["mmlu"].items)
        assert job.model_dump() == spec.model_dump()
        # a sweep's cells read the tasks where the sweep does
        sweep = SweepSpec(model=str(allowed / "model"), sparsities=[0.25], methods=["2ssp"], tasks=["winogrande"])
        cell = pinned.job_spec(sweep).prune_spec("2ssp", 0.25)
        assert cell.task_data().open_path(wino) == pinned.opened[str(wino)]
        assert load_task("winogrande", None, cell.task_data()).items[0].requests[0][0] == "opened a"
    assert open_fds() == before
    # the spec itself reads the directory as it is now
    assert load_task("winogrande", None, spec.task_data()).items[0].requests[0][0] == "swapped a"
