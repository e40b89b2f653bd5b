"""`python -m worker.run_one JOB_ID [--queue QUEUE] [--capacity JSON]`: run one job in this process (started and
supervised by `worker/supervise.py`, for the Celery task and the embedded worker alike).

Settings come from `TWOSSP_*` variables set by the parent. `--queue` is the queue the job's message came from (the
job is claimed only while it is routed there), `--capacity` the memory the worker offers (the budgets a job sets above
it are capped). Exits 0 whatever the job's outcome (the outcome is in the database), or 75 when the claim failed on a
database error (the job is still queued). `INTERRUPT_SIGNAL` from the supervisor stops the job at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time

from service.lifecycle import Delivery
from service.settings import Settings
from service.workers import Capacity
from worker.runner import ClaimUnavailable, JobRunner
from worker.supervise import CLAIM_UNAVAILABLE_EXIT, INTERRUPT_SIGNAL


def exit_with_parent(interval_s: float = 0.5) -> None:
    """Die with the supervisor: an orphaned job would keep running unsupervised (no time limit, no cancel)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.run_one", description=__doc__.splitlines()[0])
    parser.add_argument("job_id")
    parser.add_argument("--queue", help="the queue the job's message came from")
    parser.add_argument("--capacity", help="the memory the worker offers a job (JSON)")
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    exit_with_parent()
    capacity = Capacity(**json.loads(args.capacity)) if args.capacity else None
    runner = JobRunner(settings, capacity=capacity)
    signal.signal(INTERRUPT_SIGNAL, lambda *_: runner.interrupt())
    delivery = Delivery(args.queue, settings.celery_queue) if args.queue else None
    try:
        state = runner.run(args.job_id, delivery=delivery)
    except ClaimUnavailable as exc:
        logging.getLogger(__name__).warning("%s", exc)
        return CLAIM_UNAVAILABLE_EXIT
    finally:
        runner.db.dispose()
    logging.getLogger(__name__).info("job %s ended %s", args.job_id, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
