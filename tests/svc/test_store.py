"""Artifact stores (a local directory and S3 over HTTP via moto's server) and client-side verification."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from api.client import VerificationError, verify_model_dir
from service.settings import Settings
from service.store import make_store
from service.store.base import MANIFEST_NAME, ArtifactStore

from .support import s3_settings


def model_dir(root: Path) -> Path:
    out = root / "model"
    (out / "sub").mkdir(parents=True)
    (out / "config.json").write_text('{"model_type": "llama"}')
    (out / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    (out / "sub" / "extra.txt").write_text("hello")
    return out


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return make_store(Settings(data_dir=tmp_path / "data"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return make_store(Settings(data_dir=tmp_path / "data", **s3_settings(endpoint, bucket)))


def test_upload_writes_files_then_a_verifiable_manifest(store: ArtifactStore, tmp_path: Path) -> None:
    src = model_dir(tmp_path)
    store.check()
    info = store.upload_dir(src, "job-1", 2)
    assert info["prefix"] == "jobs/job-1/attempt-2"
    assert info["manifest_key"] == f"jobs/job-1/attempt-2/{MANIFEST_NAME}"
    raw = store.get_bytes(info["manifest_key"])
    assert hashlib.sha256(raw).hexdigest() == info["manifest_sha256"]
    manifest = json.loads(raw)
    assert [f["path"] for f in manifest["files"]] == ["config.json", "model.safetensors", "sub/extra.txt"]
    on_disk = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert manifest["total_bytes"] == info["total_bytes"] == on_disk
    for entry in manifest["files"]:
        data = b"".join(store.iter_bytes(f"{info['prefix']}/files/{entry['path']}"))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]
    assert store.exists(info["manifest_key"]) and not store.exists("jobs/job-1/attempt-1/manifest.json")


def test_s3_presigned_urls_serve_the_files(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    store = make_store(Settings(data_dir=tmp_path, **s3_settings(s3_endpoint, s3_bucket)))
    info = store.upload_dir(model_dir(tmp_path), "job-2", 1)
    url = store.presigned_url(f"{info['prefix']}/files/model.safetensors", 60)
    assert url is not None and "X-Amz-Signature" in url and "X-Amz-Expires=60" in url
    body = httpx.get(url).raise_for_status().content
    assert body == (tmp_path / "model" / "model.safetensors").read_bytes()


def test_local_store_rejects_keys_escaping_its_root(tmp_path: Path) -> None:
    store = make_store(Settings(data_dir=tmp_path))
    with pytest.raises(ValueError):
        store.put_bytes("../outside", b"x")


def test_verification_detects_tampering(tmp_path: Path) -> None:
    from service.store.base import build_manifest

    src = model_dir(tmp_path)
    manifest = build_manifest(src, "j", 1)
    verify_model_dir(src, dict(manifest))
    (src / "sub" / "extra.txt").write_text("hellO")
    with pytest.raises(VerificationError, match="sha256"):
        verify_model_dir(src, dict(manifest))
    (src / "config.json").unlink()
    with pytest.raises(VerificationError, match="missing"):
        verify_model_dir(src, dict(manifest))


def test_readiness_fails_when_the_bucket_is_missing(s3_endpoint: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    settings = Settings(data_dir=tmp_path, **s3_settings(s3_endpoint, "no-such-bucket"))
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["store"].startswith("error")
    assert ready.json()["checks"]["database"] == "ok"
