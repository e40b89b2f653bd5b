"""The dense work a sweep's cells share (twossp_core/shared.py), kept in the artifact store and locked in the
database, so that every worker reads what one of them computed.

Layout: `shared/{key}/files/...` and `shared/{key}/manifest.json` (written last; an artifact without it is
incomplete): the key is the sha256 of what determines the work, the manifest lists every file with its size and
sha256 and says what the key describes. A reader checks every file against the manifest; one that does not match
is computed again and replaced. The lock is a PostgreSQL advisory lock held on a connection of its own (a process
that dies releases it with its connection); on SQLite (the embedded worker, one process at a time on one machine)
an flock on a file under the data directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from service.db.session import Database
from service.store import ArtifactStore
from service.store.base import MANIFEST_NAME, file_sha256, local_files

PREFIX = "shared"
POLL_S = 0.5  # between tries of a held lock (a cancel is noticed between them)


def artifact_prefix(key: str) -> str:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"shared artifact key {key!r} is not a sha256")
    return f"{PREFIX}/{key}"


class StoreArtifactCache:
    """twossp_core.shared.ArtifactCache on the service's artifact store and database."""

    def __init__(self, store: ArtifactStore, db: Database, lock_dir: Path, job_id: str | None = None) -> None:
        self.store, self.db, self.lock_dir, self.job_id = store, db, lock_dir, job_id

    def load(self, key: str, into: Path) -> dict[str, Any] | None:
        prefix = artifact_prefix(key)
        if not self.store.exists(f"{prefix}/{MANIFEST_NAME}"):
            return None
        manifest = json.loads(self.store.get_bytes(f"{prefix}/{MANIFEST_NAME}"))
        for entry in manifest["files"]:
            target = (into / entry["path"]).resolve()
            if not target.is_relative_to(into.resolve()):
                raise ValueError(f"{prefix}: file {entry['path']!r} escapes the artifact")
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with target.open("wb") as fh:
                for chunk in self.store.iter_bytes(f"{prefix}/files/{entry['path']}"):
                    digest.update(chunk)
                    fh.write(chunk)
            if digest.hexdigest() != entry["sha256"] or target.stat().st_size != entry["size"]:
                raise ValueError(f"{prefix}/files/{entry['path']} does not match its manifest")
        return {**manifest, "name": prefix}

    def save(self, key: str, files: Path, manifest: dict[str, Any]) -> str:
        prefix = artifact_prefix(key)
        listed = []
        for path in local_files(files):
            rel = path.relative_to(files).as_posix()
            listed.append({"path": rel, "size": path.stat().st_size, "sha256": file_sha256(path)})
            self.store._retrying(rel, lambda rel=rel, path=path: self.store.put_file(  # type: ignore[misc]
                f"{prefix}/files/{rel}", path))
        full = {**manifest, "files": listed, "total_bytes": sum(f["size"] for f in listed),
                "created_at": datetime.now(UTC).isoformat(), "created_by_job": self.job_id}
        data = json.dumps(full, indent=2, sort_keys=True).encode()
        self.store._retrying(prefix, lambda: self.store.put_bytes(f"{prefix}/{MANIFEST_NAME}", data))
        return prefix

    @contextmanager
    def lock(self, key: str, checkpoint: Callable[[], None]) -> Iterator[None]:
        artifact_prefix(key)
        if self.db.engine.dialect.name == "postgresql":
            with self._pg_lock(int(key[:15], 16), checkpoint):
                yield
        else:
            with self._file_lock(key, checkpoint):
                yield

    @contextmanager
    def _pg_lock(self, number: int, checkpoint: Callable[[], None]) -> Iterator[None]:
        conn = self.db.engine.connect()
        try:
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": number}).scalar():
                conn.rollback()
                checkpoint()
                time.sleep(POLL_S)
            conn.commit()  # a session-level lock outlives the transaction
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": number})
                    conn.commit()
                except Exception:
                    conn.invalidate()  # never hand a connection that may hold the lock back to the pool
                    raise
        finally:
            conn.close()

    @contextmanager
    def _file_lock(self, key: str, checkpoint: Callable[[], None]) -> Iterator[None]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with (self.lock_dir / f"{key}.lock").open("a") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    checkpoint()
                    time.sleep(POLL_S)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
