"""Expiry of the shared dense artifacts (worker/shared.py): every read and write records the artifact's last use in
`shared_artifacts`; the reaper deletes the artifacts unused for `shared_artifact_ttl_days` from the store (local and
S3 over HTTP via moto's server) and the database, never one whose lock a cell holds or that was read since; a cell
that then needs one computes it again. Real PostgreSQL (advisory locks) and SQLite (file locks)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from service.broker import EmbeddedBroker
from service.db.migrate import upgrade_head
from service.db.models import SharedArtifact
from service.db.session import Database
from service.db.types import utcnow
from service.settings import Settings
from service.store import ArtifactStore, make_store
from service.store.base import MANIFEST_NAME
from twossp_core.shared import load_or_compute
from worker.maintenance import Reaper
from worker.shared import StoreArtifactCache, expire_shared_artifacts

from .support import s3_settings

OLD = timedelta(days=40)  # beyond the default TTL of 30 days


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def payload(key: str) -> bytes:
    return (key.encode() * 4096)[: 100_000 + int(key[:2], 16)]


@pytest.fixture(params=["local", "s3", "s3-prefixed"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> Settings:
    extra = {}
    if request.param.startswith("s3"):
        extra = s3_settings(request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket"))
        if request.param == "s3-prefixed":  # a bucket shared with other data: everything under TWOSSP_S3_PREFIX
            extra["s3_prefix"] = "team/twossp"
    return Settings(data_dir=tmp_path / "data", database_url=pg_url, **extra)  # type: ignore[arg-type]


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings)
    with database.session() as session:  # the session's database is shared by the tests: start empty
        session.query(SharedArtifact).delete()
        session.commit()
    yield database
    database.dispose()


@pytest.fixture
def store(settings: Settings) -> ArtifactStore:
    return make_store(settings)


def cache_for(settings: Settings, db: Database, store: ArtifactStore) -> StoreArtifactCache:
    return StoreArtifactCache(store, db, settings.resolved_data_dir / "locks", "job-1")


def save(cache: StoreArtifactCache, key: str, tmp_path: Path) -> str:
    files = tmp_path / f"in-{key[:8]}"
    (files / "sub").mkdir(parents=True, exist_ok=True)
    (files / "value.bin").write_bytes(payload(key))
    (files / "sub" / "note.txt").write_text(key)
    return cache.save(key, files, {"kind": "dense", "key": key})


def rows(db: Database) -> dict[str, SharedArtifact]:
    with db.session() as session:
        return {row.key: row for row in session.scalars(select(SharedArtifact))}


def age(db: Database, keys: list[str], by: timedelta) -> None:
    """Make the artifacts' last use `by` older (what the database would hold after that much time unused)."""
    with db.session() as session:
        for key in keys:
            row = session.get(SharedArtifact, key)
            assert row is not None
            row.last_used_at -= by
            row.created_at -= by
        session.commit()


def stored(store: ArtifactStore, key: str) -> list[str]:
    return sorted(store.list_keys(f"shared/{key}/"))


def test_a_read_counts_as_use_and_only_artifacts_unused_past_the_ttl_are_deleted(
    settings: Settings, db: Database, store: ArtifactStore, tmp_path: Path
) -> None:
    cache = cache_for(settings, db, store)
    used, unused = key_of("used"), key_of("unused")
    before = utcnow()
    assert save(cache, used, tmp_path) == f"shared/{used}"
    save(cache, unused, tmp_path)
    saved = rows(db)
    assert set(saved) == {used, unused}
    assert saved[used].kind == "dense" and saved[used].created_by_job == "job-1" and saved[used].reads == 0
    assert saved[used].total_bytes == len(payload(used)) + len(used)
    assert saved[used].last_used_at >= before
    assert stored(store, used) == [f"shared/{used}/files/sub/note.txt", f"shared/{used}/files/value.bin",
                                   f"shared/{used}/manifest.json"]

    # both were written 40 days ago; one was read today: the read is its last use
    age(db, [used, unused], OLD)
    read_at = utcnow()
    manifest = cache.load(used, tmp_path / "read")
    assert manifest is not None and manifest["name"] == f"shared/{used}"
    assert (tmp_path / "read" / "value.bin").read_bytes() == payload(used)
    after_read = rows(db)[used]
    assert after_read.reads == 1 and after_read.last_used_at >= read_at
    assert after_read.created_at < read_at - timedelta(days=39)  # a read is not a creation

    assert expire_shared_artifacts(db, store, settings) == [f"shared/{unused}"]
    assert stored(store, unused) == [] and unused not in rows(db)
    assert cache.load(unused, tmp_path / "gone") is None
    assert len(stored(store, used)) == 3 and used in rows(db)
    assert expire_shared_artifacts(db, store, settings) == []  # nothing else is old

    # 30 days after that read it is old too, and goes
    assert expire_shared_artifacts(db, store, settings, now=utcnow() + timedelta(days=30, minutes=1)) == [
        f"shared/{used}"]
    assert stored(store, used) == [] and rows(db) == {}


def test_a_deleted_artifact_is_computed_again_by_the_next_cell(
    settings: Settings, db: Database, store: ArtifactStore, tmp_path: Path
) -> None:
    cache = cache_for(settings, db, store)
    key = key_of("dense")
    computed: list[int] = []
    applied: list[bytes] = []

    def compute(out: Path) -> None:
        computed.append(1)
        (out / "value.bin").write_bytes(payload(key))

    def apply(files: Path) -> None:
        applied.append((files / "value.bin").read_bytes())

    def cell() -> tuple[str, bool]:
        use = load_or_compute(cache, "dense", key, {"what": "test"}, lambda: None, compute, apply)
        return use.artifact, use.reused

    assert cell() == (f"shared/{key}", False)
    assert cell() == (f"shared/{key}", True)
    assert len(computed) == 1 and applied == [payload(key)]
    assert rows(db)[key].reads == 1

    age(db, [key], OLD)
    assert expire_shared_artifacts(db, store, settings) == [f"shared/{key}"]
    assert cell() == (f"shared/{key}", False)  # gone: computed and stored again
    assert len(computed) == 2 and stored(store, key) and rows(db)[key].reads == 0
    assert cell() == (f"shared/{key}", True)
    assert applied == [payload(key), payload(key)]


def test_an_artifact_whose_lock_a_cell_holds_is_kept(
    settings: Settings, db: Database, store: ArtifactStore, tmp_path: Path
) -> None:
    cache = cache_for(settings, db, store)
    key = key_of("blockpruner order")
    save(cache, key, tmp_path)
    age(db, [key], OLD)
    # a cell extending it (BlockPruner holds the lock for its whole search) has another connection / process
    other = StoreArtifactCache(make_store(settings), Database(settings), settings.resolved_data_dir / "locks")
    try:
        with other.lock(key, lambda: None):
            with cache.try_lock(key) as free:
                assert not free
            assert expire_shared_artifacts(db, store, settings) == []
            assert len(stored(store, key)) == 3 and key in rows(db)
        with cache.try_lock(key) as free:
            assert free
        assert expire_shared_artifacts(db, store, settings) == [f"shared/{key}"]
        assert stored(store, key) == [] and rows(db) == {}
    finally:
        other.db.dispose()


def test_artifacts_stored_before_rows_were_kept_are_counted_as_used_when_found(
    settings: Settings, db: Database, store: ArtifactStore, tmp_path: Path
) -> None:
    key = key_of("stored before the migration")
    src = tmp_path / "old.bin"
    src.write_bytes(payload(key))
    store.put_file(f"shared/{key}/files/value.bin", src)
    store.put_bytes(f"shared/{key}/{MANIFEST_NAME}", b"{}")
    store.put_file(f"shared/{'0' * 63}x/files/stray", src)  # not a key: never touched
    found = utcnow()
    assert expire_shared_artifacts(db, store, settings) == []
    row = rows(db)[key]
    assert row.last_used_at >= found and row.kind is None and row.reads == 0
    assert expire_shared_artifacts(db, store, settings, now=utcnow() + timedelta(days=31)) == [f"shared/{key}"]
    assert stored(store, key) == [] and rows(db) == {}
    assert store.exists(f"shared/{'0' * 63}x/files/stray")


def test_a_ttl_of_zero_keeps_everything(
    settings: Settings, db: Database, store: ArtifactStore, tmp_path: Path
) -> None:
    save(cache_for(settings, db, store), key_of("kept"), tmp_path)
    age(db, [key_of("kept")], timedelta(days=3650))
    forever = settings.model_copy(update={"shared_artifact_ttl_days": 0})
    assert expire_shared_artifacts(db, store, forever) == []
    assert len(stored(store, key_of("kept"))) == 3


def test_the_reaper_expires_them_every_gc_interval(
    settings: Settings, db: Database, store: ArtifactStore, tmp_path: Path
) -> None:
    cache = cache_for(settings, db, store)
    old, fresh = key_of("old"), key_of("fresh")
    save(cache, old, tmp_path)
    save(cache, fresh, tmp_path)
    age(db, [old], OLD)
    reaper = Reaper(db, EmbeddedBroker(), settings.model_copy(update={"reaper_interval_s": 0.01}), store)
    time.sleep(0.05)  # the first collection comes one reaper interval after the start
    assert reaper.run().expired_shared == [f"shared/{old}"]
    assert stored(store, old) == [] and set(rows(db)) == {fresh}
    age(db, [fresh], OLD)
    assert reaper.run().expired_shared == []  # the next collection is an artifact GC interval (1 h) away
    assert set(rows(db)) == {fresh}


def test_readers_racing_the_reaper_always_get_the_artifact(
    settings: Settings, db: Database, store: ArtifactStore, tmp_path: Path
) -> None:
    """Cells read (or compute) the artifact over and over while the reaper deletes it whenever it can (every use is
    already past the TTL, seen from the reaper's clock): every cell gets the right files, none fails."""
    key = key_of("contended")
    errors: list[BaseException] = []
    outcomes: list[bool] = []
    stop = threading.Event()

    def compute(out: Path) -> None:
        (out / "value.bin").write_bytes(payload(key))

    def apply(files: Path) -> None:
        assert (files / "value.bin").read_bytes() == payload(key)

    def reader(n: int) -> None:
        database = Database(settings)
        cache = StoreArtifactCache(make_store(settings), database, settings.resolved_data_dir / "locks")
        try:
            for _ in range(n):
                use = load_or_compute(cache, "dense", key, {}, lambda: None, compute, apply)
                outcomes.append(use.reused)
        except BaseException as exc:
            errors.append(exc)
        finally:
            database.dispose()

    deleted: list[str] = []

    def reaper() -> None:
        try:
            while not stop.is_set():
                deleted.extend(expire_shared_artifacts(db, store, settings, now=utcnow() + timedelta(days=31)))
                stop.wait(0.02)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(20,)) for _ in range(3)]
    gc = threading.Thread(target=reaper)
    gc.start()
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(timeout=300)
    stop.set()
    gc.join(timeout=60)
    assert not errors, errors
    assert len(outcomes) == 60
    # it was deleted and computed again, and read in between (some reads found their files going mid-copy: a log
    # warning "unreadable", then the lock and a recomputation)
    assert deleted and outcomes.count(False) >= 2 and outcomes.count(True) >= 1, (len(deleted), outcomes)


def test_sqlite_file_locks_guard_the_embedded_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    upgrade_head(settings)
    db = Database(settings)
    store = make_store(settings)
    try:
        cache = cache_for(settings, db, store)
        kept, gone = key_of("locked"), key_of("free")
        save(cache, kept, tmp_path)
        save(cache, gone, tmp_path)
        assert cache.load(kept, tmp_path / "read") is not None and rows(db)[kept].reads == 1
        age(db, [kept, gone], OLD)
        with StoreArtifactCache(store, db, settings.resolved_data_dir / "locks").lock(kept, lambda: None):
            assert expire_shared_artifacts(db, store, settings) == [f"shared/{gone}"]
        assert stored(store, gone) == [] and set(rows(db)) == {kept}
        assert expire_shared_artifacts(db, store, settings) == [f"shared/{kept}"]
        assert rows(db) == {}
    finally:
        db.dispose()
