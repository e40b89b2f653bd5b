"""The `serve`, `keys` and `download` subcommands plug into an argparse CLI the way the core CLI loads them."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

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
