"""Run one worker process: create missing topics, then hand the app to Faust's worker."""

from __future__ import annotations

from stream.kafka import ensure_topics, wait_for_broker
from stream.settings import Settings
from stream.store import SegmentClient
from stream.worker.app import build_app
from stream.worker.faust_adapt import DeadlineWorker

_LEVELS = {"crit", "error", "warn", "info", "debug"}


def ping_redis(settings: Settings) -> None:
    """Fail fast, with the address, if Redis is not there (raises StoreUnavailable)."""
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    try:
        client.ping()
    finally:
        client.close()


def run_worker(settings: Settings) -> None:
    if settings.log_level not in _LEVELS:
        raise ValueError(
            f"SEGMENTER_LOG_LEVEL must be one of {sorted(_LEVELS)}, got {settings.log_level!r}"
        )
    wait_for_broker(settings)
    ping_redis(settings)
    ensure_topics(settings)
    app, _ = build_app(settings)
    worker = DeadlineWorker(app, loglevel=settings.log_level)
    worker.shutdown_deadline = settings.shutdown_timeout
    worker.execute_from_commandline()
