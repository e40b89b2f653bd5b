"""A job with a deployment export format: the artifact holds the format's files, listed in the manifest and
verified by `twossp download`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.client import download_artifact

from .procs import Embedded, bare_env
from .support import job_body

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(tmp_path: Path, test_data: Path) -> Iterator[Embedded]:
    server = Embedded(tmp_path, bare_env([test_data]))
    yield server
    server.proc.stop()


def test_gguf_job_artifact_is_listed_and_verified(serve: Embedded, tmp_path: Path, stories_model: Path,
                                                   stories_text: Path) -> None:
    refused = serve.api.submit(job_body(stories_model, stories_text, export="gguf", export_options={"type": "q4"}))
    assert refused.status_code == 422 and "type" in refused.text
    body = job_body(stories_model, stories_text, export="gguf", export_options={"type": "q8_0"})
    job = serve.api.wait_done(serve.api.submit(body).json()["id"], timeout=120)
    assert job["state"] == "succeeded", job.get("error")
    assert job["spec"]["export"] == "gguf" and job["spec"]["export_options"] == {"type": "q8_0", "ffn_multiple": 64}
    assert job["report"]["export"]["format"] == "gguf"
    model_dir = download_artifact(serve.base, serve.key, job["id"], tmp_path / "download")
    manifest = json.loads((tmp_path / "download" / "manifest.json").read_text())
    assert sorted(f["path"] for f in manifest["files"]) == ["README.md", "model.gguf", "report.json"]
    import gguf

    reader = gguf.GGUFReader(model_dir / "model.gguf")
    assert reader.fields["general.architecture"].contents() == job["report"]["export"]["architecture"]
    assert "q8_0" in {t.tensor_type.name.lower() for t in reader.tensors}
    # a tampered file fails the verification
    from api.client import VerificationError, verify_model_dir

    with (model_dir / "model.gguf").open("r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(VerificationError, match="model.gguf"):
        verify_model_dir(model_dir, manifest)
