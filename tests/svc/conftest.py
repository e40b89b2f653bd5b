"""Shared fixtures for the service tests: real Postgres, Redis and an S3 server on loopback.

A missing service skips locally and fails in CI (CI=true). Each test gets its own freshly migrated
Postgres database; Redis uses a dedicated DB number that is flushed around each test.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.db.migrate import upgrade_head
from service.settings import Settings
from twossp_core.example_data import example_data_dir

from .support import free_port

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_DSN = os.environ.get("TWOSSP_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
PG_URL_TEMPLATE = os.environ.get("TWOSSP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
REDIS_URL = os.environ.get("TWOSSP_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required services must be present)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def test_data() -> Path:
    root = example_data_dir(REPO, "TWOSSP_TEST_DATA")
    if not (root / "models" / "stories260k" / "config.json").is_file():
        unavailable(f"test data not found under {root} (set TWOSSP_TEST_DATA)")
    return root


@pytest.fixture(scope="session")
def stories_model(test_data: Path) -> Path:
    return test_data / "models" / "stories260k"


@pytest.fixture(scope="session")
def stories_text(test_data: Path) -> Path:
    return test_data / "text" / "tinystories-val-1000.txt"


@pytest.fixture
def app(tmp_path: Path, test_data: Path) -> Iterator[Any]:
    """The API and UI on SQLite with no worker (jobs stay queued); a module needing other settings defines its own."""
    from api.app import create_app

    settings = Settings(data_dir=tmp_path, embedded_worker=False, allowed_local_roots=[test_data])
    upgrade_head(settings)
    application = create_app(settings)
    yield application
    application.state.db.dispose()


# ---- Postgres ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_factory() -> Iterator[Callable[[], str]]:
    """Creates uniquely named, migrated databases on the test server; drops them all at the end."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3)
    except Exception as exc:
        unavailable(f"Postgres not reachable ({PG_ADMIN_DSN}): {exc}")
    created: list[str] = []

    def create() -> str:
        name = f"twossp_test_{uuid.uuid4().hex[:12]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        url = PG_URL_TEMPLATE.format(name=name)
        upgrade_head(Settings(database_url=url))
        return url

    yield create
    for name in created:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def pg_database(pg_factory: Callable[[], str]) -> str:
    return pg_factory()


@pytest.fixture
def pg_url(pg_database: str, pg_factory: Callable[[], str]) -> str:
    """The session's migrated database, emptied for this test (a fresh one if it cannot be emptied)."""
    import psycopg

    dsn = pg_database.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SET lock_timeout = '3s'")
            conn.execute("TRUNCATE job_events, jobs, api_keys, users, workers, worker_queues, shared_artifacts")
    except psycopg.errors.LockNotAvailable:
        return pg_factory()
    return pg_database


# ---- Redis --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:
        unavailable(f"Redis not reachable ({REDIS_URL}): {exc}")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    yield redis_server
    client.flushdb()
    client.close()


# ---- S3 (moto's real HTTP server on loopback) --------------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"moto[server] not installed: {exc}")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"twossp-test-{uuid.uuid4().hex[:10]}"
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket=name)
    return name


# ---- a slower model for fault tests -------------------------------------------------------------------
@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory, stories_model: Path) -> Path:
    """A randomly initialised 8-block Llama (hidden 256) with the stories260k tokenizer: jobs on it run
    long enough to be killed, cancelled or timed out mid-way."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("models") / "slow-llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(stories_model / name, out / name)
    return out




LOG_TAIL_CHARS = 4000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failed test that ran service processes shows the end of each one's log (they write under tmp_path)."""
    report = yield
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and call.when == "call" and isinstance(tmp_path, Path):
        for log in sorted(tmp_path.rglob("logs/*.log")):
            text = log.read_text(errors="replace")
            report.sections.append((f"log {log.name}", text[-LOG_TAIL_CHARS:]))
    return report
