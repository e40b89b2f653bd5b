"""The example data is found beside a checkout, or beside the local checkout it was cloned from."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from twossp_core.example_data import example_data_dir


def _git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True)


def test_a_clone_of_a_local_checkout_finds_the_data_beside_its_origin(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TWOSSP_TEST_DATA", raising=False)
    origin, data = tmp_path / "work" / "main", tmp_path / "work" / "shared" / "data"
    data.mkdir(parents=True)
    origin.mkdir()
    _git("-C", str(origin), "init", "-q")
    fresh = tmp_path / "elsewhere" / "fresh"
    fresh.parent.mkdir()
    _git("clone", "-q", str(origin), str(fresh))
    assert example_data_dir(fresh, "TWOSSP_TEST_DATA") == data.resolve()
    assert example_data_dir(origin, "TWOSSP_TEST_DATA") == data.resolve()  # beside itself
    monkeypatch.setenv("TWOSSP_TEST_DATA", str(tmp_path))
    assert example_data_dir(fresh, "TWOSSP_TEST_DATA") == tmp_path.resolve()  # the variable wins


def test_without_data_anywhere_it_names_the_folder_beside_the_checkout(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TWOSSP_EXAMPLE_DATA", raising=False)
    lonely = tmp_path / "repo"
    lonely.mkdir()
    assert example_data_dir(lonely, "TWOSSP_EXAMPLE_DATA") == (tmp_path / "shared" / "data").resolve()


@pytest.mark.parametrize("url", ["https://github.com/x/y.git", "git@github.com:x/y.git"])
def test_a_remote_origin_is_not_a_folder(tmp_path: Path, monkeypatch, url: str) -> None:
    monkeypatch.delenv("TWOSSP_TEST_DATA", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("-C", str(repo), "init", "-q")
    _git("-C", str(repo), "remote", "add", "origin", url)
    assert example_data_dir(repo, "TWOSSP_TEST_DATA") == (tmp_path / "shared" / "data").resolve()
