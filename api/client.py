"""Client-side helpers: download a job's artifact and verify every file against its manifest.

Works with both stores: a tar stream (local store) or presigned URLs (S3). The manifest itself is checked
against the `manifest_sha256` the API reports for the job, so a tampered archive or object is detected.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from service.store.base import CHUNK
from twossp_core.file_digests import file_digest


class VerificationError(Exception):
    """A downloaded file does not match the manifest (or the manifest does not match the job)."""


class NoArtifact(Exception):
    """The job has no artifact to download (not succeeded: queued, running, failed or cancelled)."""


def verify_model_dir(model_dir: Path, manifest: dict[str, Any]) -> None:
    """Check every manifest entry exists under model_dir with the listed size and sha256."""
    for entry in manifest["files"]:
        path = model_dir / _safe_relative(entry["path"])
        if not path.is_file():
            raise VerificationError(f"{entry['path']}: missing")
        if path.stat().st_size != entry["size"]:
            raise VerificationError(f"{entry['path']}: size {path.stat().st_size} != manifest {entry['size']}")
        if file_digest(path) != entry["sha256"]:
            raise VerificationError(f"{entry['path']}: sha256 differs from the manifest")


def _safe_relative(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise VerificationError(f"unsafe path in artifact: {name!r}")
    return rel


def _check_manifest(raw: bytes, expected_sha256: str) -> dict[str, Any]:
    if hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise VerificationError("manifest.json does not match the job's manifest_sha256")
    return json.loads(raw)


def _stream_to(client: httpx.Client, url: str, path: Path, headers: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        with path.open("wb") as fh:
            for chunk in response.iter_bytes(CHUNK):
                fh.write(chunk)


def download_artifact(
    base_url: str, api_key: str, job_id: str, dest: Path, *, client: httpx.Client | None = None
) -> Path:
    """Download and verify a succeeded job's model into `dest/model` (manifest at `dest/manifest.json`).

    Returns the model directory; raises VerificationError on any mismatch.
    """
    own = client is None
    client = client or httpx.Client(timeout=60.0)
    auth = {"Authorization": f"Bearer {api_key}"}
    base = base_url.rstrip("/")
    dest = Path(dest)
    try:
        job = client.get(f"{base}/jobs/{job_id}", headers=auth)
        job.raise_for_status()
        info = job.json().get("artifact")
        if not info:
            state, error = job.json().get("state"), job.json().get("error")
            raise NoArtifact(f"job {job_id} has no artifact to download: it is {state}{f' ({error})' if error else ''}")
        expected = info["manifest_sha256"]
        dest.mkdir(parents=True, exist_ok=True)
        with client.stream("GET", f"{base}/jobs/{job_id}/artifact", headers=auth) as response:
            response.raise_for_status()
            kind = response.headers.get("content-type", "")
            if kind.startswith("application/json"):
                response.read()
                listing = response.json()
            else:
                listing = None
                with tempfile.TemporaryFile(dir=dest) as tmp:
                    for chunk in response.iter_bytes(CHUNK):
                        tmp.write(chunk)
                    tmp.seek(0)
                    _extract_tar(tmp, dest)
        if listing is None:
            manifest = _check_manifest((dest / "manifest.json").read_bytes(), expected)
        else:
            manifest_raw = client.get(listing["manifest_url"]).raise_for_status().content
            manifest = _check_manifest(manifest_raw, expected)
            (dest / "manifest.json").write_bytes(manifest_raw)
            urls = {f["path"]: f["url"] for f in listing["files"]}
            for entry in manifest["files"]:
                if entry["path"] not in urls:
                    raise VerificationError(f"{entry['path']}: no download URL")
                _stream_to(client, urls[entry["path"]], dest / "model" / _safe_relative(entry["path"]))
        verify_model_dir(dest / "model", manifest)
        return dest / "model"
    finally:
        if own:
            client.close()


def _extract_tar(fileobj: Any, dest: Path) -> None:
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            rel = _safe_relative(member.name)
            if not member.isfile():
                raise VerificationError(f"unexpected archive member type: {member.name!r}")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with target.open("wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
