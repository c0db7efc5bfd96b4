"""Prometheus metrics of a worker process, served on ``/metrics`` (SEGMENTER_METRICS_PORT)."""

from __future__ import annotations

import errno
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from stream.errors import SegmenterError

log = logging.getLogger(__name__)

__all__ = ["MetricsUnavailable", "WorkerMetrics"]


class MetricsUnavailable(SegmenterError):
    """``/metrics`` cannot be served at the configured address (not a taken port: that one is
    replaced by a free port)."""


class WorkerMetrics:
    """The worker's metrics, in a registry of their own (one per worker object)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        #: The port ``/metrics`` is served on (None: not served); in the worker's heartbeat.
        self.port: int | None = None
        r = self.registry
        self.events = Counter(
            "segmenter_events", "Events decoded and applied, by input topic", ["topic"], registry=r
        )
        self.messages = Counter(
            "segmenter_messages", "Input messages consumed, by topic", ["topic"], registry=r
        )
        self.dead_letters = Counter(
            "segmenter_dead_letters", "Messages sent to the dead-letter topic", registry=r
        )
        self.changes = Counter(
            "segmenter_segment_changes",
            "Segment changes published, by change (entered / exited)",
            ["change"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "segmenter_batch_seconds",
            "Time to process one batch: features, segments, Redis, changes, table",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.event_delay = Histogram(
            "segmenter_event_delay_seconds",
            "From a message's append to the broker to its effect in Redis",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.lag = Gauge(
            "segmenter_consumer_lag",
            "Messages behind the end of each assigned input partition",
            ["topic", "partition"],
            registry=r,
        )
        self.segment_size = Gauge(
            "segmenter_segment_size",
            "Customers in each segment (any kind), from the newest size snapshot",
            ["segment"],
            registry=r,
        )
        self.offset_gaps = Counter(
            "segmenter_offset_gaps",
            "Times an input partition's records jumped ahead of the expected offset and the "
            "partition was read again from it (stream/worker/faust_adapt.py)",
            registry=r,
        )
        self.drift_alerts = Counter(
            "segmenter_drift_alerts", "Drift alerts raised, by kind", ["kind"], registry=r
        )
        self.model_version = Gauge(
            "segmenter_model_version", "Version of the model snapshot in use", registry=r
        )

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` from a background thread; return the port.

        Several workers on one host share the default port: when it is taken (another worker
        has it), this one takes a free port and says which in its log and its heartbeat
        (``metrics_port``). Any other failure raises ``MetricsUnavailable``, one line naming
        the settings.
        """
        try:
            try:
                server, _ = start_http_server(port, addr=host, registry=self.registry)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                server, _ = start_http_server(0, addr=host, registry=self.registry)
                log.warning(
                    "port %d (SEGMENTER_METRICS_PORT) is taken, another worker on this host may "
                    "have it: metrics on a free port, %d",
                    port,
                    server.server_port,
                )
        except OSError as exc:
            raise MetricsUnavailable(
                f"cannot serve /metrics on {host}:{port} (SEGMENTER_METRICS_HOST, "
                f"SEGMENTER_METRICS_PORT; 0 turns it off): {exc.strerror or exc}"
            ) from exc
        self.port = server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port
