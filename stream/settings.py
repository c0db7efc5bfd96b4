"""All configuration, from SEGMENTER_* environment variables; nothing else reads the environment."""

from __future__ import annotations

import os
import socket
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.events import DecodeLimits

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Segmenter settings. Each field reads ``SEGMENTER_<FIELD NAME IN CAPITALS>``."""

    # hide_input_in_errors: a refused value is never echoed (it may be a password).
    model_config = SettingsConfigDict(
        env_prefix="SEGMENTER_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Connections
    kafka_url: str = Field(
        "kafka://127.0.0.1:9092", description="Kafka bootstrap, kafka://host:port[;host:port]"
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description=(
            "Redis URL: redis://[:password@]host:port/db, or rediss:// for TLS; a Redis "
            "Cluster: redis+cluster://[:password@]host:port[,host:port...] (seed nodes; "
            "rediss+cluster:// for TLS; database 0 only); TLS options as query parameters, "
            "e.g. ?ssl_ca_certs=/path/ca.pem (redis-py's names)"
        ),
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how to reach Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism, with SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_username: str = Field("", description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password")
    kafka_ssl_ca_file: FilePath | None = Field(
        None, description="CA bundle to trust for Kafka TLS; unset: the system's"
    )
    kafka_ssl_cert_file: FilePath | None = Field(
        None, description="client certificate for mutual TLS (PEM)"
    )
    kafka_ssl_key_file: FilePath | None = Field(
        None, description="client certificate's private key (PEM)"
    )

    connect_timeout: Annotated[float, Field(gt=0)] = Field(
        30.0, description="seconds to wait for Kafka at start-up"
    )

    # Topics (the prefix isolates several deployments, or tests, on one cluster)
    topic_prefix: str = Field("", description="prefix for every topic name")
    partitions: Annotated[int, Field(ge=1, le=1024)] = Field(
        4, description="partitions of input topics and the table"
    )
    clickstream_topic: str = "clickstream"
    purchases_topic: str = "purchases"
    identify_topic: str = "identify"
    dead_letter_topic: str = "dead-letters"
    changes_topic: str = "segment-changes"
    samples_topic: str = "segment-samples"
    snapshots_topic: str = "model-snapshots"
    forget_topic: str = Field(
        "forget-requests", description="erasure requests (segmenter forget), keyed by customer"
    )
    identity_topic: str = Field(
        "identity-merges",
        description="identity merges between workers (models.identity), keyed by customer",
    )
    stats_topic: str = "segment-stats"
    drift_topic: str = "segment-drift"
    trigger_dead_letter_topic: str = Field(
        "trigger-dead-letters", description="changes a webhook did not accept, with the reason"
    )
    definitions_topic: str = Field(
        "segment-definitions",
        description="versioned segment and persona definitions (segmenter segments apply), "
        "one partition, compacted, read whole by every worker",
    )

    customer_changes_kept: Annotated[int, Field(ge=0, le=50)] = Field(
        5,
        description="recent segment changes kept per customer in Redis for the customer view "
        "(each line about 45 B a customer); 0 keeps none",
    )

    # Worker
    app_id: str = Field("segmenter", description="Faust app id: the consumer group and table names")
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    data_dir: str = Field("", description="Faust data directory; empty: a fresh temporary one")
    state_store: Literal["rocksdb", "memory"] = Field(
        "rocksdb",
        description="where a worker keeps its profiles: RocksDB in SEGMENTER_DATA_DIR (a "
        "restart on the same directory reopens it and reads only the changelog it missed) or "
        "memory (every profile in the worker's memory; a restart reads the whole changelog)",
    )
    batch_size: Annotated[int, Field(ge=1)] = Field(500, description="messages taken per batch")
    batch_within: Annotated[float, Field(gt=0)] = Field(
        0.05, description="seconds to wait to fill a batch"
    )
    fetch_max_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = Field(
        25,
        description=(
            "longest a fetch waits on the broker for new records, ms (Tansu answers only at "
            "the end of the wait, so this bounds how late an event is seen; Faust's own: 1500)"
        ),
    )
    batch_idle: Annotated[float, Field(ge=0)] = Field(
        0.003,
        description=(
            "end a batch early when no event came for this long, s: what was fetched is in "
            "(low latency when traffic is light, full batches when it is heavy); 0: off"
        ),
    )
    profile_cache: Annotated[int, Field(ge=0)] = Field(
        20_000,
        description=(
            "live customer profiles a worker keeps between batches (least recently used "
            "first out; 0: decode every profile from the table each batch)"
        ),
    )
    session_timeout: Annotated[float, Field(gt=0)] = Field(
        30.0, description="consumer session timeout, s"
    )
    heartbeat_interval: Annotated[float, Field(gt=0)] = Field(
        3.0, description="consumer heartbeat, s"
    )
    log_level: Literal["crit", "error", "warn", "info", "debug"] = Field(
        "info", description="crit, error, warn, info or debug"
    )
    shutdown_timeout: Annotated[float, Field(gt=0)] = Field(
        15.0, description="seconds a stopping worker may take before it exits regardless"
    )
    changelog_end_markers: bool = Field(
        True,
        description="end each batch's changelog writes with a one-record marker, so that a "
        "broker reporting the end offset as the last batch's start (Tansu) recovers every state",
    )

    # Model
    n_clusters: Annotated[int, Field(ge=2, le=64)] | Literal["auto"] = Field(
        5,
        description="behavioral clusters: a number, or auto (the best silhouette for k from 2 "
        "to 10 on the warm-up samples); the scores per k are kept either way",
    )
    cluster_categories: Annotated[int, Field(ge=0, le=64)] = Field(
        12,
        description="categories whose shares the clusters' space has: the most viewed of the "
        "customers it is learned from, chosen with the space (0: no category mix)",
    )
    cluster_category_weight: Annotated[float, Field(gt=0, le=4)] = Field(
        3.0,
        description="how many times the category mix counts in the clusters' distances, "
        "against the device or daypart mix, at most 4 (README, Measured quality)",
    )
    warmup_samples: Annotated[int, Field(ge=2)] = Field(
        1000, description="samples before first model"
    )
    learning_rate: Annotated[float, Field(gt=0, le=1)] = Field(
        0.03, description="smallest k-means step (young centres take 1/n)"
    )
    sample_every: Annotated[int, Field(ge=1)] = Field(
        5, description="send a customer's vector to the trainer every N applied events"
    )
    min_events_for_sample: Annotated[int, Field(ge=1)] = Field(
        5, description="events a customer needs before training on it"
    )
    min_sessions_for_sample: Annotated[int, Field(ge=1)] = Field(
        2,
        description="sessions a customer needs before training on it (fewer: scored, not "
        "learned from; a single visit's vector is noise that draws centres off)",
    )
    max_samples_per_second: Annotated[float, Field(ge=0)] = Field(
        400.0,
        description="training samples a worker sends per second at most (0: no limit); the "
        "single trainer learns from a thinned stream instead of falling behind a fast one",
    )
    snapshot_interval: Annotated[float, Field(gt=0)] = Field(
        2.0, description="seconds between model snapshots"
    )
    model_refresh_interval: Annotated[float, Field(gt=0)] = Field(
        0.5, description="seconds between workers' model checks"
    )
    store_check_interval: Annotated[float, Field(gt=0)] = Field(
        2.0,
        description="seconds between a worker's checks that Redis still holds what it wrote "
        "(a marker per partition); a missing or older marker, or a rebuild request, starts a "
        "rebuild of those partitions' records and counters from the worker's state",
    )
    seed: int = 42
    min_segment_share: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        0.02, description="re-fit when a cluster holds less than this share of recent samples"
    )

    # Segments
    segments_file: Path | None = Field(None, description="rule segments YAML; empty: built-in")
    personas_file: Path | None = Field(None, description="persona catalog YAML; empty: built-in")
    definitions_refresh_interval: Annotated[float, Field(gt=0)] = Field(
        0.1, description="seconds between a worker's checks for newly published definitions"
    )
    backfill_rate: Annotated[float, Field(ge=0)] = Field(
        20_000.0,
        description="customers a worker re-evaluates per second at most after new definitions "
        "(in chunks between live batches, so live traffic keeps its freshness); 0: no limit",
    )
    backfill_process: bool = Field(
        True,
        description="score a definitions backfill in a child process forked from the worker "
        "(another core; stream/worker/backfill_process.py); false: in the worker's own process",
    )
    lifecycle_new_days: Annotated[float, Field(gt=0)] = Field(
        30.0, description="days a customer is new"
    )
    lifecycle_at_risk_days: Annotated[float, Field(gt=0)] = Field(
        60.0, description="days without a purchase (a visit, for non-buyers) before at-risk"
    )
    lifecycle_lapsed_days: Annotated[float, Field(gt=0)] = Field(
        180.0, description="... before lapsed"
    )
    session_timeout_minutes: Annotated[float, Field(gt=0)] = Field(
        30.0, description="event time without events that ends a session (session.* facts)"
    )

    # Segment changes: against flapping
    hysteresis: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.1, description="another centre or persona must be this much nearer before a move"
    )
    min_dwell_seconds: Annotated[float, Field(ge=0)] = Field(
        0.0, description="event time a customer stays in a cluster or persona once entered"
    )

    # Monitoring: segment sizes over time, drift, metrics
    stats_interval: Annotated[float, Field(gt=0)] = Field(
        2.0, description="seconds between segment-size snapshots"
    )
    stats_bucket_seconds: Annotated[int, Field(ge=1)] = Field(
        3600, description="event-time bucket of a size snapshot"
    )
    stats_history: Annotated[int, Field(ge=1)] = Field(
        500, description="size snapshots (buckets) kept in Redis"
    )
    drift_delta: Annotated[float, Field(gt=0, lt=1)] = Field(
        1e-5, description="ADWIN confidence: smaller raises fewer, surer alarms"
    )
    drift_min_effect: Annotated[float, Field(ge=0)] = Field(
        0.05, description="smallest change of a share or feature mean worth an alert"
    )
    drift_centre_threshold: Annotated[float, Field(gt=0)] = Field(
        0.25, description="centre movement between model versions worth an alert"
    )
    drift_warmup_samples: Annotated[int, Field(ge=0)] = Field(
        15_000, description="training samples after the first model before any drift alert"
    )
    drift_cooldown_samples: Annotated[int, Field(ge=0)] = Field(
        5_000, description="samples between two alerts on the same subject"
    )
    drift_history: Annotated[int, Field(ge=1)] = Field(200, description="drift alerts kept")
    drift_flow_bucket_seconds: Annotated[int, Field(ge=60, le=86_400)] = Field(
        3600, description="event-time bucket of segment entries and exits (divides a day)"
    )
    drift_flow_baseline_days: Annotated[int, Field(ge=1, le=90)] = Field(
        14, description="days of a flow's own history its baseline is the mean of"
    )
    drift_flow_min_history_days: Annotated[int, Field(ge=1)] = Field(
        7, description="days of history a flow needs before it can alert"
    )
    drift_flow_rise: Annotated[float, Field(gt=1, allow_inf_nan=False)] = Field(
        2.0, description="rise (and inverse fall) of a flow its CUSUMs are tuned to detect"
    )
    drift_flow_threshold: Annotated[float, Field(gt=0)] = Field(
        12.0, description="CUSUM evidence (log-likelihood ratio) for a flow alert"
    )
    drift_flow_min_count: Annotated[int, Field(ge=1)] = Field(
        20, description="entries or exits since a flow change began before it can alert"
    )
    drift_flow_min_ratio: Annotated[float, Field(ge=1)] = Field(
        1.5, description="smallest ratio to the baseline (or its inverse) worth a flow alert"
    )
    metrics_host: str = Field("127.0.0.1", description="address of the worker's /metrics")
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        9108, description="port of the worker's Prometheus /metrics; 0 turns it off"
    )

    # Dashboard and read API (segmenter dashboard)
    http_host: str = Field("127.0.0.1", description="address the dashboard listens on")
    http_port: Annotated[int, Field(ge=0, le=65535)] = Field(8080, description="dashboard port")
    api_token: SecretStr | None = Field(
        None, description="if set, the dashboard and API require 'Authorization: Bearer <it>'"
    )

    # Redis layout
    redis_prefix: str = Field("seg:", description="prefix of every Redis key")
    record_ttl_seconds: int = Field(
        0,
        description=(
            "removed: must stay 0. Records expiring in Redis left the size counters counting "
            "them and published no exit; idle customers leave segments in event time "
            "(lifecycle) instead"
        ),
    )

    # Input limits
    max_future_skew_seconds: Annotated[float, Field(ge=0)] = Field(
        300.0,
        description="a message with an event dated later than the worker's clock plus this is "
        "a dead letter (one event from a device with a wrong clock would move event time on "
        "and expire every customer); 0: no check",
    )
    max_message_bytes: Annotated[int, Field(ge=64)] = 1_000_000
    max_events_per_message: Annotated[int, Field(ge=1)] = 1_000
    max_id_length: Annotated[int, Field(ge=8)] = 256

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"kafka_security_protocol {self.kafka_security_protocol} needs "
                "kafka_sasl_username and kafka_sasl_password"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError("kafka_ssl_cert_file and kafka_ssl_key_file go together")
        return self

    @model_validator(mode="after")
    def _warmup_fits_clusters(self) -> Settings:
        # The trainer cannot seed k centres from fewer samples: it would fail on its first batch.
        least = 3 if self.n_clusters == "auto" else self.n_clusters
        if self.warmup_samples < least:
            raise ValueError(
                f"SEGMENTER_WARMUP_SAMPLES ({self.warmup_samples}) must be at least {least} "
                f"for SEGMENTER_N_CLUSTERS={self.n_clusters}"
            )
        return self

    @model_validator(mode="after")
    def _lifecycle_in_order(self) -> Settings:
        if not self.lifecycle_at_risk_days < self.lifecycle_lapsed_days:
            raise ValueError("lifecycle_at_risk_days must be less than lifecycle_lapsed_days")
        return self

    @model_validator(mode="after")
    def _flow_buckets_fit(self) -> Settings:
        if 86_400 % self.drift_flow_bucket_seconds:
            raise ValueError("drift_flow_bucket_seconds must divide a day (86400)")
        if self.drift_flow_min_history_days > self.drift_flow_baseline_days:
            raise ValueError("drift_flow_min_history_days must not exceed drift_flow_baseline_days")
        return self

    @model_validator(mode="after")
    def _no_record_ttl(self) -> Settings:
        if self.record_ttl_seconds:
            raise ValueError(
                "SEGMENTER_RECORD_TTL_SECONDS is no longer supported (records that expired in "
                "Redis stayed in the size counters and left no exit): unset it; customers "
                "leave segments as they go idle through the lifecycle stages, in event time"
            )
        return self

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def input_topics(self) -> dict[str, str]:
        """Topic name to input source (clickstream, purchases, identify); see stream.topology."""
        from stream.topology import topology

        return topology(self).input_topics

    @property
    def bootstrap_servers(self) -> list[str]:
        hosts = self.kafka_url.split("://", 1)[-1]
        return [h.strip() for h in hosts.replace(",", ";").split(";") if h.strip()]

    @cached_property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_message_bytes, self.max_events_per_message, self.max_id_length)

    def env(self) -> dict[str, str]:
        """These settings as SEGMENTER_* variables, to hand to a child process."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "worker_id" or value is None:  # each process names itself
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[f"SEGMENTER_{name.upper()}"] = str(value)
        return out
