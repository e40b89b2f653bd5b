"""A model file's sha256 is remembered by what stat says of the file: read once, again only once it changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from twossp_core import file_digests
from twossp_core.file_digests import FileDigests


def test_a_file_is_hashed_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path] = []
    real = file_digests.file_digest
    monkeypatch.setattr(file_digests, "file_digest", lambda p: reads.append(p) or real(p))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights" * 1000)
    memo = FileDigests(tmp_path / "digests")
    first = memo(weights)
    assert first == hashlib.sha256(weights.read_bytes()).hexdigest() and len(reads) == 1
    link = tmp_path / "link"
    link.symlink_to(weights)
    assert memo(link) == first and FileDigests(tmp_path / "digests")(weights) == first  # another process too
    assert len(reads) == 1

    weights.write_bytes(b"other weights")  # a new size and times: another entry, hashed again
    assert memo(weights) == hashlib.sha256(b"other weights").hexdigest() and len(reads) == 2
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched, same size: hashed again
    memo(weights)
    assert len(reads) == 3


def test_a_damaged_entry_is_hashed_again(tmp_path: Path) -> None:
    weights = tmp_path / "w"
    weights.write_bytes(b"x")
    memo = FileDigests(tmp_path / "digests")
    memo(weights)
    (entry,) = (tmp_path / "digests").iterdir()
    entry.write_text("truncated")
    assert memo(weights) == hashlib.sha256(b"x").hexdigest() == entry.read_text()
