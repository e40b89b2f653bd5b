"""The schema comes only from Alembic migrations, and matches the ORM models on Postgres and SQLite."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db.migrate import alembic_config, upgrade_head
from service.db.models import Base
from service.db.session import make_engine
from service.settings import Settings


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_postgres_migrations_match_models(pg_url: str) -> None:
    assert _diff(pg_url) == []
    engine = make_engine(pg_url)
    assert {"users", "api_keys", "jobs", "alembic_version"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_postgres_downgrade_and_upgrade_again(pg_url: str) -> None:
    cfg = alembic_config(pg_url)
    command.downgrade(cfg, "base")
    engine = make_engine(pg_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
    command.upgrade(cfg, "head")
    assert _diff(pg_url) == []


@pytest.mark.parametrize("times", [2])
def test_sqlite_embedded_default_migrates_idempotently(tmp_path, times: int) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    for _ in range(times):
        upgrade_head(settings)
    assert settings.sqlalchemy_url.endswith("data/twossp.db")
    assert _diff(settings.sqlalchemy_url) == []
