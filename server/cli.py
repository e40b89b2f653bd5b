"""`twossp serve` and `twossp keys create NAME`, registered into the core CLI through the
`twossp.commands` entry-point group (also runnable as `python -m server.cli ...`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from service.settings import Settings


def configure_logging(level: str) -> None:
    """The service's log lines at `level` (--log-level) and above, uvicorn's included."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger().setLevel(level.upper())
    os.environ["TWOSSP_LOG_LEVEL"] = level.upper()  # the embedded worker's job processes log at the same level


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from service.broker import EmbeddedBroker
    from service.db.migrate import upgrade_head

    configure_logging(args.log_level)
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
    from service.keys import create_key

    key = _keys_session(lambda session: create_key(session, args.name))
    print(f"created an API key for user {args.name!r}; it is shown only once:")
    print(key)
    return 0


def _keys_session(run: Any) -> Any:
    """Run `run(session)` against the configured database (migrated first when auto_migrate is on)."""
    from service.db.migrate import upgrade_head
    from service.db.session import Database

    settings = Settings()
    if settings.auto_migrate:
        upgrade_head(settings)
    db = Database(settings)
    try:
        with db.session() as session:
            return run(session)
    finally:
        db.dispose()


def cmd_keys_list(args: argparse.Namespace) -> int:
    from service.keys import list_keys

    def rows(session: Any) -> list[str]:
        return [
            f"{k.prefix:<12} {k.user.name:<20} created {k.created_at:%Y-%m-%d %H:%M:%S}"
            + (f"  revoked {k.revoked_at:%Y-%m-%d %H:%M:%S}" if k.revoked_at else "")
            for k in list_keys(session)
        ]

    lines = _keys_session(rows)
    print("\n".join(lines) if lines else "no API keys (create one with: twossp keys create NAME)")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from service.keys import revoke_key

    def revoke(session: Any) -> tuple[str, str]:
        key = revoke_key(session, args.key)
        return key.prefix, key.user.name

    try:
        prefix, user = _keys_session(revoke)
    except LookupError as exc:
        print(f"twossp: error: {exc}", file=sys.stderr)
        return 2
    print(f"revoked key {prefix} of user {user!r}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import httpx

    from api.client import NoArtifact, VerificationError, download_artifact

    def fail(message: str, code: int = 2) -> int:
        print(f"twossp: error: {message}", file=sys.stderr)
        return code

    key = args.key or os.environ.get("TWOSSP_API_KEY")
    if not key:
        return fail("pass --key or set TWOSSP_API_KEY")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        return fail(f"--out {out}: exists and is not an empty directory (pass --overwrite to replace its files)")
    try:
        model_dir = download_artifact(args.api, key, args.job_id, out)
    except NoArtifact as exc:
        return fail(str(exc))
    except VerificationError as exc:
        return fail(f"verification failed: {exc}", 1)
    except httpx.HTTPStatusError as exc:
        try:
            detail = exc.response.json().get("detail")
        except ValueError:
            detail = None
        return fail(f"job {args.job_id}: HTTP {exc.response.status_code}{f': {detail}' if detail else ''}")
    except httpx.RequestError as exc:
        return fail(f"cannot reach the API at {args.api} ({type(exc).__name__}: {exc})")
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
    listing = sub.add_parser("list", help="list the keys: prefix, user, created, revoked")
    listing.set_defaults(func=cmd_keys_list)
    revoke = sub.add_parser("revoke", help="revoke a key (requests with it get 401)")
    revoke.add_argument("key", help="the key, or the prefix `twossp keys list` shows")
    revoke.set_defaults(func=cmd_keys_revoke)


def register_download(subparsers: Any) -> None:
    p = subparsers.add_parser("download", help="download a job's pruned model and verify it against its manifest")
    p.add_argument("job_id")
    p.add_argument("--api", default="http://127.0.0.1:8000", help="service base URL")
    p.add_argument("--key", help="API key (default: $TWOSSP_API_KEY)")
    p.add_argument("--out", required=True, help="directory for manifest.json and model/")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out directory")
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
