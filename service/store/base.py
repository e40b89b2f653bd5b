"""The artifact store interface and the manifest that makes an upload verifiable.

Layout: `jobs/{job_id}/attempt-{n}/files/...` holds the pruned model; `jobs/{job_id}/attempt-{n}/manifest.json`
is written last and lists every file with its size and sha256. An attempt without a manifest is incomplete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

from service.records import ArtifactRecord
from twossp_core.file_digests import file_digest

log = logging.getLogger(__name__)
MANIFEST_NAME = "manifest.json"
CHUNK = 1024 * 1024


class ManifestFile(TypedDict):
    path: str
    size: int
    sha256: str


class Manifest(TypedDict):
    job_id: str
    attempt: int
    created_at: str
    files: list[ManifestFile]
    total_bytes: int


def attempt_prefix(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/attempt-{attempt}"


def local_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def build_manifest(root: Path, job_id: str, attempt: int) -> Manifest:
    files: list[ManifestFile] = []
    for path in local_files(root):
        files.append(
            {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": file_digest(path)}
        )
    return {
        "job_id": job_id,
        "attempt": attempt,
        "created_at": datetime.now(UTC).isoformat(),
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
    }


def manifest_bytes(manifest: Manifest) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


class ArtifactStore(ABC):
    """Minimal object-store operations; keys are `/`-separated relative paths."""

    kind: str
    upload_retries: int = 4  # per object, with exponential backoff from retry_delay_s
    retry_delay_s: float = 0.5

    def is_transient(self, exc: Exception) -> bool:
        """Whether an upload error may go away on its own (connection trouble, a 5xx, throttling)."""
        return isinstance(exc, OSError)

    def _retrying(self, what: str, put: Callable[[], None]) -> None:
        delay = self.retry_delay_s
        for attempt in range(self.upload_retries + 1):
            try:
                put()
                return
            except Exception as exc:
                if attempt == self.upload_retries or not self.is_transient(exc):
                    raise
                log.warning("uploading %s failed (%s: %s); retry %d in %.1f s", what, type(exc).__name__, exc,
                            attempt + 1, delay)
                time.sleep(delay)
                delay *= 2

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def iter_bytes(self, key: str) -> Iterator[bytes]: ...

    @abstractmethod
    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A short-lived GET URL, or None where the store cannot make one (local)."""

    @abstractmethod
    def check(self) -> None:
        """Raise if the store is unreachable or not writable."""

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix` (a `/`-terminated folder)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix` (a `/`-terminated folder)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key (nothing when it is not there)."""

    def attempts(self) -> dict[tuple[str, int], bool]:
        """(job id, attempt) of every attempt prefix in the store -> whether it has a manifest."""
        found: dict[tuple[str, int], bool] = {}
        for key in self.list_keys("jobs/"):
            parts = key.split("/")
            if len(parts) < 4 or not parts[2].startswith("attempt-") or not parts[2][8:].isdigit():
                continue
            slot = (parts[1], int(parts[2][8:]))
            found[slot] = found.get(slot, False) or (len(parts) == 4 and parts[3] == MANIFEST_NAME)
        return found

    def upload_dir(self, root: Path, job_id: str, attempt: int) -> ArtifactRecord:
        """Upload every file, then the manifest (last). Returns the artifact record for the job row."""
        prefix = attempt_prefix(job_id, attempt)
        manifest = build_manifest(root, job_id, attempt)
        for entry in manifest["files"]:
            key, path = f"{prefix}/files/{entry['path']}", root / entry["path"]
            self._retrying(key, lambda key=key, path=path: self.put_file(key, path))  # type: ignore[misc]
        data = manifest_bytes(manifest)
        self._retrying(f"{prefix}/{MANIFEST_NAME}", lambda: self.put_bytes(f"{prefix}/{MANIFEST_NAME}", data))
        if not self.exists(f"{prefix}/{MANIFEST_NAME}"):
            raise RuntimeError(f"manifest {prefix}/{MANIFEST_NAME} not found after upload")
        return {
            "store": self.kind,
            "prefix": prefix,
            "attempt": attempt,
            "manifest_key": f"{prefix}/{MANIFEST_NAME}",
            "manifest_sha256": hashlib.sha256(data).hexdigest(),
            "files": len(manifest["files"]),
            "total_bytes": manifest["total_bytes"],
        }
