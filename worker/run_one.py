"""`python -m worker.run_one JOB_ID`: run one job in this process (the embedded worker's child).

Settings come from `TWOSSP_*` variables set by the parent. Exits 0 whatever the job's outcome; the
outcome is in the database.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from service.settings import Settings
from worker.runner import JobRunner


def exit_with_parent(interval_s: float = 0.5) -> None:
    """Die with the embedded worker: an orphaned job would keep running unsupervised (no time limit)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m worker.run_one JOB_ID", file=sys.stderr)
        return 2
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    exit_with_parent()
    runner = JobRunner(settings)
    try:
        state = runner.run(args[0])
    finally:
        runner.db.dispose()
    logging.getLogger(__name__).info("job %s ended %s", args[0], state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
