"""Overload shedding: latency and the share of `503` answers of one API process under bursts of concurrent requests.

For each shape (embedded: `twossp serve` on SQLite with its in-process worker; distributed: the API on PostgreSQL
with a Redis broker), the script starts a real API process on loopback, then sends bursts of 50, 200 and 500
concurrent authenticated `GET /jobs?limit=1` (each on its own connection, over plain asyncio streams: a full client
library would spend more CPU than the server on a 2-core machine), with the in-flight limit at its default
(`TWOSSP_MAX_IN_FLIGHT_REQUESTS`) and, for comparison, out of the way. Rate limits are out of the way. Reported per
burst: p50 and p99 of every answer's latency, p99 of the `200` answers, p99 of the `503` answers, and the share of
`503`. Nothing here asserts a timing (tests/svc/test_overload.py checks the behaviour).

    .venv/bin/python bench/overload.py            # both shapes, 3 bursts per size (about 2 minutes)
    .venv/bin/python bench/overload.py --shapes embedded --repeats 1

The distributed shape needs PostgreSQL (a scratch database is created and dropped: --pg-dsn) and Redis
(--redis-url; only queue and rate-limit keys are written). Writes bench/results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.settings import Settings  # noqa: E402

SIZES = (50, 200, 500)
OUT_OF_THE_WAY = 1_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_for(settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSSP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(settings)
    return env


@contextmanager
def api_process(env: dict[str, str], cwd: Path) -> Iterator[tuple[str, str]]:
    """`twossp serve` with `env`; yields its base URL and an API key."""
    key = subprocess.run(
        [sys.executable, "-m", "server.cli", "keys", "create", "bench"], env=env, cwd=cwd, capture_output=True,
        text=True, check=True,
    ).stdout.strip().splitlines()[-1]
    port = free_port()
    log = (cwd / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level",
         "warning"], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited: {(cwd / f'serve-{port}.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    if b" 200 " in sock.recv(100):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", key
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


async def _one(port: int, raw: bytes, start: asyncio.Event) -> tuple[int, float]:
    await start.wait()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    head = await reader.readline()
    await reader.read()
    elapsed = time.perf_counter() - t0
    writer.close()
    return int(head.split(b" ", 2)[1]), elapsed


async def _burst(address: str, key: str, size: int) -> list[tuple[int, float]]:
    port = int(address.rsplit(":", 1)[1])
    raw = (f"GET /jobs?limit=1 HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
           ).encode()
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one(port, raw, start)) for _ in range(size)]
    await asyncio.sleep(0.05)
    start.set()
    return await asyncio.gather(*tasks)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def summary(results: list[tuple[int, float]]) -> dict[str, Any]:
    every = [t for _, t in results]
    ok = [t for s, t in results if s == 200]
    shed = [t for s, t in results if s == 503]
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "requests": len(results), "statuses": statuses, "share_503": round(len(shed) / len(results), 3),
        "p50_ms": ms(percentile(every, 0.5)), "p99_ms": ms(percentile(every, 0.99)),
        "p99_200_ms": ms(percentile(ok, 0.99)), "p99_503_ms": ms(percentile(shed, 0.99)),
    }


def measure(address: str, key: str, repeats: int) -> dict[str, list[dict[str, Any]]]:
    asyncio.run(_burst(address, key, 16))  # warm-up: connections, caches, the key lookup
    out: dict[str, list[dict[str, Any]]] = {}
    for size in SIZES:
        out[str(size)] = []
        for _ in range(repeats):
            out[str(size)].append(summary(asyncio.run(_burst(address, key, size))))
            time.sleep(1.0)
    return out


@contextmanager
def postgres_database(dsn: str) -> Iterator[str]:
    import psycopg

    name = f"twossp_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        params = dict(part.split("=", 1) for part in dsn.split())
        yield (f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
               f"{params.get('port', '5432')}/{name}")
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def run_shape(shape: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base = {"TWOSSP_RATE_LIMIT_PER_S": str(OUT_OF_THE_WAY), "TWOSSP_RATE_LIMIT_BURST": str(OUT_OF_THE_WAY)}
    results: dict[str, Any] = {}
    with contextmanager_for(shape, args) as extra:
        for label, limit in (("default_limit", None), ("no_limit", OUT_OF_THE_WAY)):
            data_dir = work / f"{shape}-{label}"
            data_dir.mkdir()
            settings = {**base, **extra, "TWOSSP_DATA_DIR": str(data_dir)}
            if limit is not None:
                settings["TWOSSP_MAX_IN_FLIGHT_REQUESTS"] = str(limit)
            with api_process(env_for(settings), data_dir) as (address, key):
                print(f"{shape}, {label}: {address}", flush=True)
                results[label] = measure(address, key, args.repeats)
    return results


@contextmanager
def contextmanager_for(shape: str, args: argparse.Namespace) -> Iterator[dict[str, str]]:
    if shape == "embedded":
        yield {}
        return
    with postgres_database(args.pg_dsn) as url:
        from service.db.migrate import upgrade_head

        upgrade_head(Settings(database_url=url))
        yield {"TWOSSP_DATABASE_URL": url, "TWOSSP_BROKER_URL": args.redis_url, "TWOSSP_AUTO_MIGRATE": "false"}


def table(results: dict[str, Any]) -> str:
    lines = ["| shape | in-flight limit | concurrent | p50 (ms) | p99 (ms) | p99 of 200 (ms) | p99 of 503 (ms) | 503 |",
             "|---|---|---|---|---|---|---|---|"]
    default = Settings.model_fields["max_in_flight_requests"].default
    for shape, by_limit in results["shapes"].items():
        for label, by_size in by_limit.items():
            limit = f"{default} (default)" if label == "default_limit" else "none"
            for size, runs in by_size.items():
                def cell(key: str, runs: list[dict[str, Any]] = runs) -> str:
                    values = [r[key] for r in runs if r[key] is not None]
                    if not values:
                        return "-"
                    return " / ".join(f"{v:.0f}" if key != "share_503" else f"{v:.0%}" for v in values)
                lines.append(f"| {shape} | {limit} | {size} | {cell('p50_ms')} | {cell('p99_ms')} | "
                             f"{cell('p99_200_ms')} | {cell('p99_503_ms')} | {cell('share_503')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="embedded,distributed")
    parser.add_argument("--repeats", type=int, default=3, help="bursts per size")
    parser.add_argument("--pg-dsn", default=os.environ.get("TWOSSP_TEST_PG_DSN",
                                                           "host=127.0.0.1 port=5432 user=postgres dbname=test"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "overload.json")
    args = parser.parse_args()

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_start": [round(x, 2) for x in os.getloadavg()]},
        "request": "GET /jobs?limit=1 (authenticated), each on its own connection",
        "shapes": {},
    }
    with tempfile.TemporaryDirectory(prefix="twossp-overload-") as tmp:
        for shape in args.shapes.split(","):
            results["shapes"][shape] = run_shape(shape, args, Path(tmp))
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"load average {results['machine']['load_average_start']} -> {results['machine']['load_average_end']}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
