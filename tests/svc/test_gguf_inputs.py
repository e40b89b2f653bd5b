"""A GGUF file (or a directory holding one) as a job's local model: accepted within the allowed roots, refused
outside them, and read by the worker through the file it opened and checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from api.errors import InputRejected
from api.services.inputs import validate_request
from service.settings import Settings
from twossp_core.errors import ModelNotFound
from twossp_core.gguf_source import local_gguf, read_header
from twossp_core.plan.spec import parse_spec
from twossp_core.runtime.loading import load_model
from worker.inputs import pinned_inputs


@pytest.fixture(scope="module")
def roots(tmp_path_factory, test_data: Path) -> tuple[Path, Path, Path]:
    """(allowed root holding stories260k as stories.gguf and some text, the GGUF file, a root outside holding
    another model as other.gguf)."""
    from twossp_core.export.gguf import write_gguf

    base = tmp_path_factory.mktemp("gguf-roots")
    allowed, outside = base / "allowed", base / "outside"
    allowed.mkdir()
    outside.mkdir()
    model, tokenizer = load_model(str(test_data / "models" / "stories260k"), device="cpu")
    path = allowed / "stories.gguf"
    write_gguf(model, tokenizer, path, {"model": "stories260k"}, "f32")
    (allowed / "text.txt").write_text((test_data / "text" / "tinystories-val-1000.txt").read_text()[:200_000])
    other, other_tokenizer = load_model(str(test_data / "models" / "c4llama-8l"), device="cpu")
    write_gguf(other, other_tokenizer, outside / "other.gguf", {"model": "c4llama-8l"}, "f32")
    return allowed, path, outside


def _request(model: str, allowed: Path) -> dict:
    text = str(allowed / "text.txt")
    return {"model": model, "sparsity": 0.375, "calibration": [f"{text}:0:50"], "eval": [f"{text}:50:60"],
            "doc_separator": "<|endoftext|>", "export": "gguf"}


def test_a_gguf_file_or_a_directory_holding_one_is_accepted_within_the_roots(tmp_path, roots):
    allowed, gguf, outside = roots
    settings = Settings(data_dir=tmp_path, allowed_local_roots=[str(allowed)])
    _, spec = validate_request(_request(str(gguf), allowed), settings)
    assert spec.model == str(gguf)
    folder = allowed / "folder"
    folder.mkdir(exist_ok=True)
    (folder / "weights.gguf").write_bytes(gguf.read_bytes())
    _, spec = validate_request(_request(str(folder), allowed), settings)
    assert spec.model == str(folder)
    with pytest.raises(InputRejected, match="TWOSSP_ALLOWED_LOCAL_ROOTS"):
        validate_request(_request(str(outside / "other.gguf"), allowed), settings)
    link = allowed / "elsewhere.gguf"
    link.unlink(missing_ok=True)
    link.symlink_to(outside / "other.gguf")  # a link inside the roots to a file outside them
    with pytest.raises(InputRejected, match="TWOSSP_ALLOWED_LOCAL_ROOTS"):
        validate_request(_request(str(link), allowed), settings)
    (folder / "second.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFound, match="holds 2 .gguf files"):
        validate_request(_request(str(folder), allowed), settings)


@pytest.mark.slow
def test_the_worker_reads_the_gguf_file_it_opened_and_checked(tmp_path, roots, stories_model):
    allowed, gguf, outside = roots
    spec = parse_spec(_request(str(gguf), allowed))
    with pinned_inputs(spec, [allowed], tmp_path / "inputs") as pinned:
        source = spec.with_opened(pinned.opened).model_input()
        view = pinned.opened[str(gguf)]
        assert source.name == str(gguf) and source.open_path == view
        assert view != gguf and view.name == gguf.name
        gguf.rename(allowed / "moved.gguf")  # the name is swapped for a link out of the roots after the check
        gguf.symlink_to(outside / "other.gguf")
        try:
            assert local_gguf(source) == view
            assert read_header(view).architecture == "llama"
            model, _ = load_model(source, device="cpu")  # read through the open file
            reference, _ = load_model(str(stories_model), device="cpu")
            ids = torch.arange(32).unsqueeze(0)
            with torch.no_grad():
                assert torch.equal(model(ids).logits, reference(ids).logits)
        finally:
            gguf.unlink()
            (allowed / "moved.gguf").rename(gguf)
    with pytest.raises(Exception, match="TWOSSP_ALLOWED_LOCAL_ROOTS|outside the allowed roots"):
        with pinned_inputs(parse_spec(_request(str(outside / "other.gguf"), allowed)), [allowed], tmp_path / "refused"):
            pass
