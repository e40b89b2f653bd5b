"""The dense work a sweep's cells share (twossp_core/shared.py), kept in the artifact store and locked in the
database, so that every worker reads what one of them computed.

Layout: `shared/{key}/files/...` and `shared/{key}/manifest.json` (written last; an artifact without it is
incomplete): the key is the sha256 of what determines the work, the manifest lists every file with its size and
sha256 and says what the key describes. A reader checks every file against the manifest; one that does not match
is computed again and replaced. The lock is a PostgreSQL advisory lock held on a connection of its own (a process
that dies releases it with its connection); on SQLite (the embedded worker, one process at a time on one machine)
an flock on a file under the data directory.

Expiry: each artifact has a row in `shared_artifacts` with when it was stored and when a cell last read or wrote it
(a read is recorded before its files are read). Every `artifact_gc_interval_s` the reaper (`expire_shared_artifacts`)
deletes the artifacts unused for `shared_artifact_ttl_days`: it tries the artifact's lock without waiting (one held by
a cell computing or extending it is kept), deletes the row only if it is still that old (a read recorded meanwhile
keeps it), then the manifest (readers see no artifact from then on) and the files. A reader that was copying the
files when they went finds them missing or not matching the manifest and, as for a damaged artifact, takes the lock
and computes them again. An artifact the store holds without a row (stored before rows were kept) gets one the first
time the reaper lists the store, counted as used then.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, text

from service.db.models import SharedArtifact
from service.db.session import Database
from service.db.types import utcnow
from service.settings import Settings
from service.store import ArtifactStore
from service.store.base import MANIFEST_NAME, local_files
from twossp_core.file_digests import FileDigests, file_digest

log = logging.getLogger(__name__)
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
        # the model files' sha256, remembered on this machine (beside the locks, in the worker's data directory)
        self.file_digest = FileDigests(lock_dir.parent / "file-digests")

    def load(self, key: str, into: Path) -> dict[str, Any] | None:
        prefix = artifact_prefix(key)
        if not self.store.exists(f"{prefix}/{MANIFEST_NAME}"):
            return None
        # recorded before the files are read: the reaper, which deletes only what is still unused when it deletes,
        # keeps it (or deleted it already: then the files are missing or do not match, and the caller computes them)
        self._record(key, read=True)
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
            listed.append({"path": rel, "size": path.stat().st_size, "sha256": file_digest(path)})
            self.store._retrying(rel, lambda rel=rel, path=path: self.store.put_file(  # type: ignore[misc]
                f"{prefix}/files/{rel}", path))
        full = {**manifest, "files": listed, "total_bytes": sum(f["size"] for f in listed),
                "created_at": utcnow().isoformat(), "created_by_job": self.job_id}
        data = json.dumps(full, indent=2, sort_keys=True).encode()
        self.store._retrying(prefix, lambda: self.store.put_bytes(f"{prefix}/{MANIFEST_NAME}", data))
        self._record(key, read=False, kind=str(manifest.get("kind") or "") or None, total_bytes=full["total_bytes"])
        return prefix

    def _record(self, key: str, *, read: bool, kind: str | None = None, total_bytes: int | None = None) -> None:
        """The artifact's row: used now (and read once more, or stored now). A database error is logged, not raised:
        the cell goes on, and the artifact at worst expires a TTL after its last recorded use."""
        now = utcnow()
        values: dict[str, Any] = {"key": key, "last_used_at": now, "created_at": now, "reads": 1 if read else 0}
        update: dict[str, Any] = {"last_used_at": now}
        if read:
            update["reads"] = SharedArtifact.reads + 1
        else:
            values.update(kind=kind, total_bytes=total_bytes, created_by_job=self.job_id)
            update.update(kind=kind, total_bytes=total_bytes, created_by_job=self.job_id, created_at=now)
        try:
            with self.db.session() as session:
                session.execute(_insert(self.db)(SharedArtifact).values(**values).on_conflict_do_update(
                    index_elements=[SharedArtifact.key], set_=update))
                session.commit()
        except Exception as exc:
            log.warning("recording the use of shared artifact %s failed (%s: %s)", key, type(exc).__name__, exc)

    @contextmanager
    def lock(self, key: str, checkpoint: Callable[[], None]) -> Iterator[None]:
        with self._lock(key, checkpoint):
            yield

    @contextmanager
    def try_lock(self, key: str) -> Iterator[bool]:
        """The lock if it is free now (True inside), else False at once."""
        def held_elsewhere() -> None:
            raise _Busy

        try:
            with self._lock(key, held_elsewhere):
                yield True
                return
        except _Busy:
            pass
        yield False

    @contextmanager
    def _lock(self, key: str, checkpoint: Callable[[], None]) -> Iterator[None]:
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

    # expiry ----------------------------------------------------------------------------------------------------
    def adopt(self, now: datetime) -> list[str]:
        """Give every artifact the store holds without a row (stored before rows were kept) one, used `now`."""
        found = sorted({k.split("/")[1] for k in self.store.list_keys(f"{PREFIX}/") if k.count("/") >= 2})
        found = [key for key in found if _is_key(key)]
        adopted: list[str] = []
        for start in range(0, len(found), 500):
            chunk = found[start : start + 500]
            with self.db.session() as session:
                known = set(session.scalars(select(SharedArtifact.key).where(SharedArtifact.key.in_(chunk))))
                missing = [key for key in chunk if key not in known]
                if missing:
                    session.execute(_insert(self.db)(SharedArtifact).values(
                        [{"key": key, "created_at": now, "last_used_at": now, "reads": 0} for key in missing]
                    ).on_conflict_do_nothing(index_elements=[SharedArtifact.key]))
                    session.commit()
            adopted += missing
        return adopted

    def delete_if_unused(self, key: str, cutoff: datetime) -> bool:
        """Delete the artifact when nothing used it since `cutoff` and no cell holds its lock; whether it did."""
        prefix = artifact_prefix(key)
        with self.try_lock(key) as held:
            if not held:
                return False  # a cell is computing or extending it
            with self.db.session() as session:
                gone = session.execute(delete(SharedArtifact).where(
                    SharedArtifact.key == key, SharedArtifact.last_used_at < cutoff))
                if gone.rowcount != 1:  # type: ignore[attr-defined]
                    return False  # read since the reaper listed it (or deleted by another reaper)
                # the manifest first: from then on readers find no artifact, never a part of one. The row goes with
                # the last file (a failed deletion leaves it for the next pass); a read recorded meanwhile waits for
                # it, then finds the files gone
                self.store.delete(f"{prefix}/{MANIFEST_NAME}")
                self.store.delete_prefix(f"{prefix}/")
                session.commit()
        return True


class _Busy(Exception):
    """The lock is held elsewhere (try_lock does not wait)."""


def _is_key(key: str) -> bool:
    return len(key) == 64 and all(c in "0123456789abcdef" for c in key)


def _insert(db: Database) -> Any:
    """INSERT ... ON CONFLICT of the database's dialect (PostgreSQL or SQLite)."""
    if db.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def expire_shared_artifacts(
    db: Database, store: ArtifactStore, settings: Settings, now: datetime | None = None
) -> list[str]:
    """Delete the shared artifacts no cell read or wrote for `shared_artifact_ttl_days` (0: none); returns their
    names (`shared/<key>`). Safe beside running cells and other reapers (see the module's doc)."""
    ttl = settings.shared_artifact_ttl_days
    if ttl <= 0:
        return []
    now = now or utcnow()
    cutoff = now - timedelta(days=ttl)
    cache = StoreArtifactCache(store, db, settings.resolved_data_dir / "locks")
    cache.adopt(now)
    with db.session() as session:
        stale = list(session.scalars(select(SharedArtifact.key).where(SharedArtifact.last_used_at < cutoff)
                                     .order_by(SharedArtifact.last_used_at)))
    removed: list[str] = []
    for key in stale:
        if not _is_key(key):
            continue
        try:
            if cache.delete_if_unused(key, cutoff):
                removed.append(artifact_prefix(key))
        except Exception:
            log.exception("deleting shared artifact %s failed; next pass tries again", key)
    if removed:
        log.info("deleted %d shared artifacts unused for %g days", len(removed), ttl)
    return removed
