"""Shared fixtures: where the real data lives, and tiny random models of every supported family."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from twossp_core.example_data import example_data_dir

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return example_data_dir(REPO, "TWOSSP_TEST_DATA")


def require_data(*relative: str) -> Path:
    """Path to real test data; skip locally when absent, fail in CI (CI=true)."""
    path = data_dir().joinpath(*relative)
    if not path.exists():
        message = f"test data missing: {path} (set TWOSSP_TEST_DATA)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def stories_model() -> Path:
    return require_data("models", "stories260k")


@pytest.fixture(scope="session")
def stories_text() -> Path:
    return require_data("text", "tinystories-val-1000.txt")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny random llama, gemma2 and phi models saved as model directories (for loading from disk)."""
    from tiny_models import save_tiny

    root = tmp_path_factory.mktemp("saved-models")
    return {family: save_tiny(family, root / family) for family in ("llama", "gemma2", "phi")}
