"""Run one worker process: check the input topics' partitions, create missing topics, then
hand the app to Faust's worker."""

from __future__ import annotations

import logging

from stream.kafka import co_partitioned_count, ensure_topics, wait_for_broker
from stream.settings import Settings
from stream.store import SegmentClient
from stream.worker.app import build_app
from stream.worker.faust_adapt import DeadlineWorker

log = logging.getLogger(__name__)


def ping_redis(settings: Settings) -> None:
    """Fail fast, with the address, if Redis is not there (raises StoreUnavailable)."""
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    try:
        client.ping()
    finally:
        client.close()


def follow_input_partitions(settings: Settings) -> Settings:
    """The settings with the partition count the input topics already have.

    The feature table must have as many partitions as the input topics (co-partitioning): with
    fewer, the first event on a partition beyond them crashed the agent, in a loop. Input
    topics often exist first (created by the collectors' team, or auto-created by a producer
    with the broker's default count): when they agree on a count, the table follows it, and
    the topics still missing are created with it. When they disagree, ``PartitionMismatch``
    (a ``SegmenterError``: one line, exit code 2) names each topic's count.
    """
    count = co_partitioned_count(settings)
    if count == settings.partitions:
        return settings
    log.warning(
        "the existing input topics (and table changelog) have %d partitions and "
        "SEGMENTER_PARTITIONS is %d: the feature table follows them (%d partitions)",
        count,
        settings.partitions,
        count,
    )
    return settings.model_copy(update={"partitions": count})


def run_worker(settings: Settings) -> None:
    wait_for_broker(settings)
    ping_redis(settings)
    settings = follow_input_partitions(settings)
    ensure_topics(settings)
    app, _ = build_app(settings)
    worker = DeadlineWorker(app, loglevel=settings.log_level)
    worker.shutdown_deadline = settings.shutdown_timeout
    worker.execute_from_commandline()
