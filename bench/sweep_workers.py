"""A 12-cell sweep through the distributed service with 1, 2 and 4 Celery worker processes.

The sweep: c4llama-8l, methods 2ssp, shortgpt, window, blockpruner at sparsities 0.25, 0.375, 0.5; calibration
`c4-validation-2k.jsonl:0:1000` (16 windows), evaluation on the same file's rows 1000:2000 (8 windows), windows of
256 tokens, no throughput measurement. For each worker count the script starts the real processes the service tests
start (tests/svc/procs.py: the API, the reaper, N Celery workers with concurrency 1, torch on one thread and
OMP_NUM_THREADS=1) on a fresh PostgreSQL database, a fresh data directory (nothing shared is stored yet) and a
flushed Redis database, submits the sweep and waits for it to end.

Recorded per run: the wall time from the submit to the sweep's end (the comparison is written before the sweep is
`succeeded`), the cells' running time summed, how many worker processes ran cells, and the dense work from the
cells' reports (`sweep.shared`: seconds spent computing the shared artifacts — the dense measurements and the
statistics the methods share — against seconds spent reading artifacts another cell stored). Every run's comparison
rows must equal the 1-worker run's, timings aside. The last worker count then submits the same sweep again on the
same store (`again`): every shared artifact is read, none computed. A "reused" entry's seconds include waiting while
another cell computes that artifact. Nothing here asserts a timing.

    .venv/bin/python bench/sweep_workers.py                     # 1, 2 and 4 workers (about 4 minutes on 2 cores)
    .venv/bin/python bench/sweep_workers.py --workers 1 2

Needs PostgreSQL (--pg-dsn; a scratch database per run is created and dropped) and Redis (--redis-url; that
database is flushed). Writes bench/results/sweep-workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.db.migrate import upgrade_head  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.svc.procs import Api, Proc, create_key, start_api, start_reaper, start_worker, wait_until  # noqa: E402
from twossp_core.example_data import example_data_dir  # noqa: E402

METHODS = ["2ssp", "shortgpt", "window", "blockpruner"]
SPARSITIES = [0.25, 0.375, 0.5]
TIMING_KEYS = {"prune_s", "heal_s", "throughput_tokens_per_s", "speedup", "throughput_unreliable"}


def sweep_body(data: Path) -> dict[str, Any]:
    c4 = data / "text" / "c4-validation-2k.jsonl"
    return {
        "kind": "sweep",
        "model": str(data / "models" / "c4llama-8l"),
        "methods": METHODS,
        "sparsities": SPARSITIES,
        "calibration": [f"{c4}:0:1000"],
        "eval": [f"{c4}:1000:2000"],
        "eval_windows": 8,
        "seq_len": 256,
        "calibration_windows": 16,
        "measure_throughput": False,
    }


def scratch_database(dsn: str, url_template: str) -> tuple[str, str]:
    import psycopg

    name = f"twossp_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = url_template.format(name=name)
    upgrade_head(Settings(database_url=url))
    return name, url


def drop_database(dsn: str, name: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def without(row: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in keys}


def measure(api: Api, data: Path, workers: list[Proc], timeout: float) -> dict[str, Any]:
    """Submit the sweep, wait for its end, and read its cells."""
    t0 = time.perf_counter()
    submitted = api.submit(sweep_body(data))
    if submitted.status_code != 202:
        raise RuntimeError(f"submit: {submitted.status_code} {submitted.text}")
    sweep_id = submitted.json()["id"]

    def ended() -> dict[str, Any] | None:
        job = api.job(sweep_id)
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    job = wait_until(ended, timeout=timeout, what="the sweep to end", interval=0.25)
    wall = time.perf_counter() - t0
    if job["state"] != "succeeded":
        raise RuntimeError(f"sweep {job['state']}: {job.get('error')}")

    cells = [api.job(c["id"]) for c in job["cells"]["items"]]
    cell_ids = {c["id"] for c in cells}
    computed = reused = 0.0
    computed_kinds: dict[str, int] = {}
    for cell in cells:
        for use in ((cell.get("report") or {}).get("sweep") or {}).get("shared") or []:
            if use["reused"]:
                reused += use["seconds"]
            else:
                computed += use["seconds"]
                computed_kinds[use["kind"]] = computed_kinds.get(use["kind"], 0) + 1
    cell_s = sum(seconds(c.get("started_at"), c.get("finished_at")) or 0.0 for c in cells)
    ran = [set(re.findall(r"twossp\.run_job\[([0-9a-f-]{36})\] received", w.output())) & cell_ids
           for w in workers]
    rows = job["report"]["rows"]
    return {
        "wall_s": round(wall, 2),
        "server_wall_s": seconds(job.get("created_at"), job.get("finished_at")),
        "cells": len(cells),
        "cells_failed": sum(1 for r in rows if r.get("error") is not None),
        "cells_per_worker": [len(r) for r in ran],
        "cells_running_s": round(cell_s, 2),
        "shared_computed_s": round(computed, 2),
        "shared_reused_s": round(reused, 2),
        "shared_computed_share_of_cells": round(computed / cell_s, 4) if cell_s else None,
        "shared_computed_kinds": computed_kinds,
        "rows": rows,
    }


def run_once(n_workers: int, data: Path, args: argparse.Namespace, again: bool) -> dict[str, Any]:
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    db_name, db_url = scratch_database(args.pg_dsn, args.pg_url)
    procs: list[Proc] = []
    try:
        with tempfile.TemporaryDirectory(prefix="twossp-sweep-workers-") as tmp:
            root = Path(tmp)
            logs = root / "logs"
            logs.mkdir()
            settings = Settings(
                data_dir=root / "data",
                database_url=db_url,
                broker_url=args.redis_url,
                allowed_local_roots=[data],
                torch_threads=1,
            )
            api_proc, base = start_api(settings, logs)
            procs.append(api_proc)
            procs.append(start_reaper(settings, logs))
            workers = [start_worker(settings, logs, OMP_NUM_THREADS="1") for _ in range(n_workers)]
            procs.extend(workers)
            api = Api(base, create_key(settings, "bench"))

            run = {"workers": n_workers, **measure(api, data, workers, args.timeout)}
            if again:  # the same sweep on the same store: every shared artifact is read, none computed
                run["again"] = measure(api, data, workers, args.timeout)
            return run
    finally:
        for proc in reversed(procs):
            proc.stop()
        drop_database(args.pg_dsn, db_name)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--pg-dsn", default=os.environ.get("TWOSSP_TEST_PG_DSN",
                                                       "host=127.0.0.1 port=5432 user=postgres dbname=test"))
    p.add_argument("--pg-url", default=os.environ.get("TWOSSP_TEST_PG_URL",
                                                       "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"))
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one sweep may take")
    p.add_argument("--no-again", action="store_true", help="skip the repeat sweep on the last run's store")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sweep-workers.json")
    args = p.parse_args(argv)
    data = example_data_dir(REPO, "TWOSSP_TEST_DATA")

    runs = []
    for n in args.workers:
        print(f"sweep with {n} worker process(es) ...", flush=True)
        runs.append(run_once(n, data, args, again=n == args.workers[-1] and not args.no_again))
        print(f"  {runs[-1]['wall_s']:.1f} s", flush=True)

    reference = [without(r, TIMING_KEYS) for r in runs[0]["rows"]]
    for run in runs:
        run["rows_equal_first_run"] = [without(r, TIMING_KEYS) for r in run["rows"]] == reference
        if "again" in run:
            again = run["again"]
            again["rows_equal_first_run"] = [without(r, TIMING_KEYS) for r in again.pop("rows")] == reference
        run["speedup_vs_first"] = round(runs[0]["wall_s"] / run["wall_s"], 3)
    result = {
        "sweep": {k: v for k, v in sweep_body(Path("$DATA")).items() if k != "kind"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": [{k: v for k, v in r.items() if k != "rows"} for r in runs],
        "rows": runs[0]["rows"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'workers':>7} {'wall s':>8} {'speedup':>8} {'cells s':>8} {'computed s':>10} {'reused s':>9} "
          f"{'share':>6} {'per worker':>12} rows")
    table = []
    for run in runs:
        table.append(run)
        if "again" in run:
            table.append({**run["again"], "workers": f"{run['workers']}, again",
                          "speedup_vs_first": runs[0]["wall_s"] / run["again"]["wall_s"]})
    for r in table:
        share = r["shared_computed_share_of_cells"]
        print(f"{r['workers']:>7} {r['wall_s']:>8.1f} {r['speedup_vs_first']:>8.2f} {r['cells_running_s']:>8.1f} "
              f"{r['shared_computed_s']:>10.1f} {r['shared_reused_s']:>9.1f} "
              f"{share * 100 if share is not None else float('nan'):>5.1f}% "
              f"{','.join(map(str, r['cells_per_worker'])):>12} "
              f"{'same' if r['rows_equal_first_run'] else 'DIFFERENT'}")
    print(f"\nwrote {args.out}")
    return 0 if all(r["rows_equal_first_run"] for r in table) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
