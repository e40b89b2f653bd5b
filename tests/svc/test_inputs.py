"""The worker's view of a job's local inputs (worker/inputs.py): files opened first, checked where they really
are, and read through links to the open files, so a path swapped afterwards is never followed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from service.paths import PathRefused
from twossp_core.data.sources import iter_documents
from twossp_core.local_inputs import local_path, redirected
from twossp_core.plan.sources import DataSource
from twossp_core.plan.spec import JobSpecBase
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
    before = open_fds()
    with pinned_inputs(spec_for(allowed), [allowed], tmp_path / "inputs") as pinned, redirected(pinned.redirects):
        assert set(pinned.redirects) == {str(model), str(text)}  # the hub dataset is not a local input
        for path in (model / "model.safetensors", text):
            path.unlink()
            path.symlink_to(outside / path.name)
        assert (model / "model.safetensors").read_bytes() == b"outside weights"  # the swap is real
        view = local_path(str(model))
        assert view != model and view.name == "model"
        assert (view / "model.safetensors").read_bytes() == b"inside weights"
        assert (view / "config.json").read_text() == '{"inside": true}'
        assert (view / "sub" / "extra.json").read_text() == "{}"
        docs = list(iter_documents(DataSource.parse(f"{text}:0:2"), "calibration", "<s>"))
        assert docs == ["inside a", "inside b"]
    assert open_fds() == before  # every file opened for the job is closed again
    assert local_path(str(model)) == model  # and names mean their own paths again


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
        view = pinned.redirects[str(model)]
        assert sorted(p.name for p in view.iterdir()) == ["config.json", "model.safetensors", "sub"]
