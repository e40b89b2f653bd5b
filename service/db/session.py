"""Engine and session factory from settings; SQLite gets WAL and a busy timeout for multi-process use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings

CONNECT_TIMEOUT_S = 5  # an unreachable database fails a request in seconds, not after the OS TCP timeout


def make_engine(url: str, *, pool_size: int = 5, pool_timeout_s: float = 30.0) -> Engine:
    """`pool_size` connections at most (no overflow: the bound is the size); waiting longer than
    `pool_timeout_s` for one raises sqlalchemy.exc.TimeoutError (the API answers 503)."""
    pool: dict[str, float] = {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout_s}
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            pool = {}  # one in-memory connection per thread: nothing to size
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    connect = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    return create_engine(url, pool_pre_ping=True, connect_args=connect, **pool)


class Database:
    """One engine and session factory per process."""

    def __init__(self, settings: Settings) -> None:
        if settings.sqlalchemy_url.startswith("sqlite"):
            settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(
            settings.sqlalchemy_url,
            pool_size=settings.db_pool_size or settings.api_threads + 4,
            pool_timeout_s=settings.db_pool_timeout_s,
        )
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            try:
                yield session
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
