"""The `serve`, `keys` and `download` subcommands plug into an argparse CLI the way the core CLI loads them."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from server.cli import register_download, register_keys, register_serve
from service.db.models import ApiKey, User
from service.db.session import Database
from service.keys import hash_key
from service.settings import Settings

from .procs import REPO


def test_subcommands_register_into_a_parent_parser() -> None:
    parser = argparse.ArgumentParser(prog="twossp")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (register_serve, register_keys, register_download):
        register(sub)
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.host, args.port) == ("0.0.0.0", 9000) and callable(args.func)
    args = parser.parse_args(["keys", "create", "carol"])
    assert args.name == "carol" and callable(args.func)
    args = parser.parse_args(["download", "JOB", "--out", "x"])
    assert args.job_id == "JOB" and args.api == "http://127.0.0.1:8000"


@pytest.mark.slow
def test_keys_create_prints_the_key_last_and_stores_only_its_hash(tmp_path: Path, pg_url: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TWOSSP_DATABASE_URL": pg_url}
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "keys", "create", "carol"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("tsp_") and len(key) > 40
    db = Database(Settings(database_url=pg_url))
    with db.session() as session:
        row = session.scalar(select(ApiKey).join(User).where(User.name == "carol"))
        assert row is not None and row.key_hash == hash_key(key) and key not in (row.key_hash, row.prefix)
    db.dispose()


@pytest.mark.slow
def test_keys_list_and_revoke_and_a_revoked_key_gets_401(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TWOSSP_DATABASE_URL": pg_url}

    def twossp(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True)

    key = twossp("keys", "create", "dave").stdout.strip().splitlines()[-1]
    other = twossp("keys", "create", "erin").stdout.strip().splitlines()[-1]
    listing = twossp("keys", "list")
    assert listing.returncode == 0
    (line,) = [row for row in listing.stdout.splitlines() if row.startswith(key[:10])]
    assert "dave" in line and "revoked" not in line and key not in listing.stdout
    settings = Settings(data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_url, auth_cache_s=0)
    with TestClient(create_app(settings)) as client:
        assert client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        revoked = twossp("keys", "revoke", key[:10])
        assert revoked.returncode == 0 and "dave" in revoked.stdout
        assert client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        assert client.get("/jobs", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    (line,) = [row for row in twossp("keys", "list").stdout.splitlines() if row.startswith(key[:10])]
    assert "revoked" in line
    missing = twossp("keys", "revoke", "tsp_nothing-like-this")
    assert missing.returncode == 2 and missing.stderr.strip().startswith("twossp: error: 0 keys match")


def test_serve_honours_its_log_level(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import logging

    import uvicorn

    from server.cli import build_parser

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))  # everything but the serving loop
    monkeypatch.setenv("TWOSSP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TWOSSP_EMBEDDED_WORKER", "false")
    monkeypatch.setenv("TWOSSP_LOG_LEVEL", "INFO")  # restored after the test; serve sets it for its job processes
    root = logging.getLogger()
    level = root.level
    try:
        for name, value in (("warning", logging.WARNING), ("debug", logging.DEBUG)):
            args = build_parser().parse_args(["serve", "--log-level", name])
            assert args.func(args) == 0
            assert root.level == value and seen["log_level"] == name
            assert logging.getLogger("worker.runner").isEnabledFor(logging.INFO) == (value <= logging.INFO)
            assert Settings().log_level == name.upper()  # what the embedded worker's job processes read
    finally:
        root.setLevel(level)


def test_the_reaper_says_when_it_starts(pg_url: str, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import threading

    from worker.reaper import serve_forever

    stop = threading.Event()
    stop.set()  # one look at the start, no pass
    with caplog.at_level(logging.INFO, logger="twossp.reaper"):
        serve_forever(Settings(database_url=pg_url, broker_url=redis_url), stop)
    assert any(r.getMessage().startswith("reaper started: a maintenance pass every") for r in caplog.records)
