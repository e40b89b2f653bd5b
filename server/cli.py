"""`twossp serve` and `twossp keys create NAME`, registered into the core CLI through the
`twossp.commands` entry-point group (also runnable as `python -m server.cli ...`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from service.settings import Settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from service.broker import EmbeddedBroker
    from service.db.migrate import upgrade_head

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    if settings.auto_migrate:
        upgrade_head(settings)
    services: list[Any] = []
    broker = None
    if settings.embedded:
        from worker.embedded import EmbeddedWorker

        broker = EmbeddedBroker()
        if settings.embedded_worker:
            services.append(EmbeddedWorker(settings, broker))
    app = create_app(settings, broker=broker, services=services)
    mode = "embedded worker" if services else ("no worker" if settings.embedded else "Celery broker")
    print(
        f"twossp: serving on http://{args.host}:{args.port} ({mode}; database {_redact(settings.sqlalchemy_url)}; "
        f"artifacts {settings.artifact_store})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from service.db.migrate import upgrade_head
    from service.db.session import Database
    from service.keys import create_key

    settings = Settings()
    if settings.auto_migrate:
        upgrade_head(settings)
    db = Database(settings)
    try:
        with db.session() as session:
            key = create_key(session, args.name)
    finally:
        db.dispose()
    print(f"created an API key for user {args.name!r}; it is shown only once:")
    print(key)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from api.client import VerificationError, download_artifact

    key = args.key or os.environ.get("TWOSSP_API_KEY")
    if not key:
        print("twossp: error: pass --key or set TWOSSP_API_KEY", file=sys.stderr)
        return 2
    try:
        model_dir = download_artifact(args.api, key, args.job_id, Path(args.out))
    except VerificationError as exc:
        print(f"twossp: error: verification failed: {exc}", file=sys.stderr)
        return 1
    print(f"verified every file against the manifest; model in {model_dir}", file=sys.stderr)
    print(model_dir)
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def register_serve(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="serve the HTTP API (plus an in-process worker without a broker)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def register_keys(subparsers: Any) -> None:
    p = subparsers.add_parser("keys", help="manage API keys")
    sub = p.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="create a user's API key and print it (last line)")
    create.add_argument("name", help="user name (created if new)")
    create.set_defaults(func=cmd_keys_create)


def register_download(subparsers: Any) -> None:
    p = subparsers.add_parser("download", help="download a job's pruned model and verify it against its manifest")
    p.add_argument("job_id")
    p.add_argument("--api", default="http://127.0.0.1:8000", help="service base URL")
    p.add_argument("--key", help="API key (default: $TWOSSP_API_KEY)")
    p.add_argument("--out", required=True, help="directory for manifest.json and model/")
    p.set_defaults(func=cmd_download)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twossp")
    sub = parser.add_subparsers(dest="command", required=True)
    register_serve(sub)
    register_keys(sub)
    register_download(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
