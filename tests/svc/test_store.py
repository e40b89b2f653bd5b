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


def test_s3_presigned_urls_name_the_public_endpoint(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    # the workers reach S3 as 127.0.0.1; clients (here: the same server as localhost) through another name
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    assert public != s3_endpoint
    settings = Settings(data_dir=tmp_path, s3_public_endpoint_url=public, **s3_settings(s3_endpoint, s3_bucket))
    store = make_store(settings)
    info = store.upload_dir(model_dir(tmp_path), "job-3", 1)
    url = store.presigned_url(f"{info['prefix']}/files/model.safetensors", 60)
    assert url is not None and url.startswith(f"{public}/")
    assert httpx.get(url).raise_for_status().content == (tmp_path / "model" / "model.safetensors").read_bytes()


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


class LateProxy:
    """A TCP forwarder to `target` that starts listening only after `delay_s`: until then every connection is
    refused, like an S3 endpoint that is briefly unreachable."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        import socket
        import threading

        from .support import free_port

        self.port = free_port()
        self.target = target
        self._socket = socket
        self._stop = threading.Event()
        self._timer = threading.Timer(delay_s, self._serve)
        self._timer.start()
        self._threads: list[threading.Thread] = []

    def _serve(self) -> None:
        import threading

        server = self._socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.2)
        self._server = server
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = self._socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)
        server.close()

    @staticmethod
    def _pipe(src, dst) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass

    def close(self) -> None:
        self._timer.cancel()
        self._stop.set()


@pytest.mark.slow
def test_s3_upload_retries_while_the_endpoint_is_unreachable(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = LateProxy((host, int(port)), delay_s=2.0)
    try:
        store = make_store(
            Settings(data_dir=tmp_path / "data", **s3_settings(f"http://127.0.0.1:{proxy.port}", s3_bucket))
        )
        with caplog.at_level("WARNING", logger="service.store.base"):
            info = store.upload_dir(model_dir(tmp_path), "job-r", 1)
        assert "retry 1" in caplog.text
        manifest = json.loads(store.get_bytes(info["manifest_key"]))
        assert {f["path"] for f in manifest["files"]} == {"config.json", "model.safetensors", "sub/extra.txt"}
    finally:
        proxy.close()


@pytest.mark.slow
def test_s3_upload_gives_up_after_its_retries(tmp_path: Path, s3_bucket: str) -> None:
    from .support import free_port

    settings = Settings(data_dir=tmp_path / "data", upload_retries=1, **s3_settings(f"http://127.0.0.1:{free_port()}",
                                                                                   s3_bucket))
    with pytest.raises(Exception, match="Could not connect"):
        make_store(settings).upload_dir(model_dir(tmp_path), "job-x", 1)


def test_attempts_that_never_published_a_manifest_are_collected(
    store: ArtifactStore, tmp_path: Path, pg_url: str
) -> None:
    from service.db.models import Job, User
    from service.db.session import Database
    from worker.maintenance import collect_incomplete_attempts

    db = Database(Settings(database_url=pg_url))
    with db.session() as session:
        user = User(name="gc")
        session.add(user)
        session.flush()
        for job_id, state, attempt in (("a" * 8, "succeeded", 2), ("b" * 8, "running", 1), ("c" * 8, "failed", 1)):
            session.add(Job(id=job_id, owner_id=user.id, request_hash="x", spec={}, model="m", state=state,
                            attempt=attempt, time_limit_s=60))
        session.commit()
    src = model_dir(tmp_path)
    store.upload_dir(src, "a" * 8, 2)  # published
    for job_id, attempt in (("a" * 8, 1), ("b" * 8, 1), ("c" * 8, 1), ("unknown1", 1)):  # uploads cut short
        store.put_file(f"jobs/{job_id}/attempt-{attempt}/files/config.json", src / "config.json")
    try:
        removed = collect_incomplete_attempts(db, store)
    finally:
        db.dispose()
    # the dead attempts of finished jobs go; the published one, the running upload and unknown jobs stay
    assert sorted(removed) == ["jobs/aaaaaaaa/attempt-1/", "jobs/cccccccc/attempt-1/"]
    assert store.attempts() == {("aaaaaaaa", 2): True, ("bbbbbbbb", 1): False, ("unknown1", 1): False}
