"""`python -m worker.reaper`: the periodic reaper/dispatcher loop for the distributed setup.

Run one or more (transitions are compare-and-set); it needs the database and the broker, never torch.
"""

from __future__ import annotations

import logging
import signal
import threading

from service.broker import make_broker
from service.db.session import Database
from service.settings import Settings
from service.store import make_store
from worker.maintenance import Reaper

log = logging.getLogger("twossp.reaper")


def serve_forever(settings: Settings, stop: threading.Event) -> None:
    db = Database(settings)
    broker = make_broker(settings.broker_url, settings.celery_queue)
    reaper = Reaper(db, broker, settings, make_store(settings))
    log.info(
        "reaper started: a maintenance pass every %g s (cancel grace %g s, dispatch grace %g s; shared artifacts "
        "expire after %g days unused, 0: never)",
        settings.reaper_interval_s, settings.cancel_grace_s, settings.dispatch_grace_s,
        settings.shared_artifact_ttl_days,
    )
    try:
        while not stop.is_set():
            try:
                result = reaper.run()
                if result.requeued or result.failed or result.dispatched or result.cancelled or result.rerouted:
                    log.info(
                        "requeued=%s failed=%s cancelled=%s rerouted=%s dispatched=%s",
                        result.requeued, result.failed, result.cancelled, result.rerouted, result.dispatched,
                    )
                if result.expired_shared:
                    log.info("deleted shared artifacts unused for %g days: %s", settings.shared_artifact_ttl_days,
                             result.expired_shared)
            except Exception:
                log.exception("maintenance pass failed; retrying")
            stop.wait(settings.reaper_interval_s)
    finally:
        broker.close()
        db.dispose()


def main() -> None:
    logging.basicConfig(level=Settings().log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve_forever(Settings(), stop)


if __name__ == "__main__":
    main()
