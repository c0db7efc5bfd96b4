"""Run one worker process: create missing topics, then hand the app to Faust's worker."""

from __future__ import annotations

import logging
import os
import signal
import threading

import faust

from stream.kafka import ensure_topics, wait_for_broker
from stream.settings import Settings
from stream.store import SegmentClient
from stream.worker.app import build_app

_LEVELS = {"crit", "error", "warn", "info", "debug"}


def ping_redis(settings: Settings) -> None:
    """Fail fast, with the address, if Redis is not there (raises StoreUnavailable)."""
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    try:
        client.ping()
    finally:
        client.close()


log = logging.getLogger(__name__)


class _Worker(faust.Worker):
    """Faust's worker with a deadline on shutdown.

    On SIGTERM or SIGINT Faust stops cleanly: it finishes the batch, commits and leaves the
    group. With the broker gone, that stop waited 60 s on a consumer thread before giving up
    (measured), longer than a supervisor's grace period. After ``shutdown_deadline`` seconds
    the process now exits by itself; what was not acknowledged is read again by the next
    owner (at-least-once, as after a SIGKILL).
    """

    shutdown_deadline = 15.0

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        deadline = self.shutdown_deadline

        def give_up() -> None:
            log.warning("clean shutdown took over %.0f s (broker gone?); exiting now", deadline)
            logging.shutdown()
            os._exit(1)

        timer = threading.Timer(deadline, give_up)
        timer.daemon = True
        timer.start()
        super()._schedule_shutdown(signum)


def run_worker(settings: Settings) -> None:
    if settings.log_level not in _LEVELS:
        raise ValueError(
            f"SEGMENTER_LOG_LEVEL must be one of {sorted(_LEVELS)}, got {settings.log_level!r}"
        )
    wait_for_broker(settings)
    ping_redis(settings)
    ensure_topics(settings)
    app, _ = build_app(settings)
    worker = _Worker(app, loglevel=settings.log_level)
    worker.shutdown_deadline = settings.shutdown_timeout
    worker.execute_from_commandline()
