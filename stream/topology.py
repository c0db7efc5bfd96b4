"""Every Kafka topic of the segmenter in one table: its name's setting, partitions and role.

``TOPICS`` is the table; ``topology(settings)`` turns it into concrete topics (prefix applied,
the input partition count from ``settings.partitions``). Topic creation (``ensure_topics``),
the producers and the worker all read it, so a topic is named, counted and described here only.

The input topics and the forget requests are co-partitioned with the worker's feature table
(Faust's ``profiles`` table, whose changelog topic ``<app_id>-profiles-changelog`` Faust
creates and compacts itself, so it is not in this table): they, and the segment changes, have
``settings.partitions`` partitions. Every other topic has one: the samples and snapshots are
read by the single model trainer, the rest are small.

>>> from stream.settings import Settings
>>> topics = topology(Settings(topic_prefix="t-", partitions=8))
>>> topics["samples"].topic, topics["samples"].partitions
('t-segment-samples', 1)
>>> topics.input_topics
{'t-clickstream': 'clickstream', 't-purchases': 'purchases', 't-identify': 'identify'}
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from stream.settings import Settings

__all__ = ["INPUT_SOURCES", "TOPICS", "Role", "Topic", "TopicSpec", "Topology", "topology"]

#: ``input``: customer events the worker consumes (clickstream, purchases, identify);
#: ``request``: commands to the worker, co-partitioned with the events (forget, and the
#: identity merges the workers send each other: ``models.identity``);
#: ``output``: what the segmenter writes for others to read;
#: ``internal``: between the segmenter's own parts (worker to trainer, trainer's models).
Role = Literal["input", "request", "output", "internal"]

#: The partition count of a topic co-partitioned with the input topics and the feature table.
INPUT: Literal["input"] = "input"


@dataclass(frozen=True)
class TopicSpec:
    """One row of the table. ``key`` names the setting that holds the topic's name
    (``<key>_topic``, e.g. ``SEGMENTER_CLICKSTREAM_TOPIC``)."""

    key: str
    role: Role
    partitions: int | Literal["input"]
    description: str
    #: For topics the worker consumes: the source kind its messages are decoded as.
    source: str | None = None
    #: Kept compacted (the newest message per key is what counts).
    compacted: bool = False

    @property
    def setting(self) -> str:
        return f"{self.key}_topic"


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("clickstream", "input", INPUT, "page views, searches, carts", "clickstream"),
    TopicSpec("purchases", "input", INPUT, "orders", "purchases"),
    TopicSpec("identify", "input", INPUT, "customer traits", "identify"),
    TopicSpec(
        "forget", "request", INPUT, "erasure requests (segmenter forget), by customer", "forget"
    ),
    TopicSpec(
        "identity",
        "request",
        INPUT,
        "identity merges, and messages of merged ids, keyed by the customer they go to",
        "identity",
    ),
    TopicSpec("dead_letter", "output", 1, "input messages that could not be applied, and why"),
    TopicSpec("changes", "output", INPUT, "segment entries and exits, keyed by customer"),
    TopicSpec("samples", "internal", 1, "feature vectors and segment flows for the single trainer"),
    TopicSpec("snapshots", "internal", 1, "every model version the trainer publishes"),
    TopicSpec("stats", "output", 1, "segment sizes over event time"),
    TopicSpec("drift", "output", 1, "drift alerts"),
    TopicSpec("trigger_dead_letter", "output", 1, "changes a webhook did not accept, and why"),
    TopicSpec(
        "definitions",
        "internal",
        1,
        "versioned segment and persona definitions (segmenter segments apply), keyed by kind",
        compacted=True,
    ),
)

#: The source kinds of the input topics, in table order: what a producer may send.
INPUT_SOURCES: tuple[str, ...] = tuple(
    spec.source for spec in TOPICS if spec.role == "input" and spec.source
)


@dataclass(frozen=True)
class Topic:
    """A concrete topic: the table's row for one ``Settings``."""

    spec: TopicSpec
    topic: str
    partitions: int

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def role(self) -> Role:
        return self.spec.role

    @property
    def source(self) -> str | None:
        return self.spec.source


@dataclass(frozen=True)
class Topology:
    """Every topic for one ``Settings``, in table order; look one up by key: ``t["changes"]``."""

    topics: tuple[Topic, ...]
    #: Partitions of the input topics, the feature table and what is co-partitioned with them.
    input_partitions: int

    def __iter__(self) -> Iterator[Topic]:
        return iter(self.topics)

    def __len__(self) -> int:
        return len(self.topics)

    def __getitem__(self, key: str) -> Topic:
        for t in self.topics:
            if t.key == key:
                return t
        raise KeyError(f"no topic {key!r} in the topology (keys: {[t.key for t in self]})")

    def with_role(self, *roles: Role) -> tuple[Topic, ...]:
        return tuple(t for t in self.topics if t.role in roles)

    @property
    def by_key(self) -> dict[str, str]:
        """Key (``changes``, ``samples``, ``dead_letter``...) to topic name."""
        return {t.key: t.topic for t in self.topics}

    @property
    def compacted(self) -> set[str]:
        """The names of the topics kept compacted."""
        return {t.topic for t in self.topics if t.spec.compacted}

    @property
    def names(self) -> dict[str, int]:
        """Topic name to partition count: what ``ensure_topics`` creates."""
        return {t.topic: t.partitions for t in self.topics}

    @property
    def input_topics(self) -> dict[str, str]:
        """Input topic name to its source (clickstream, purchases, identify)."""
        return {t.topic: t.spec.source or t.key for t in self.with_role("input")}

    @property
    def consumed(self) -> dict[str, str]:
        """Every topic the worker's segmenting agent reads, to its source: the input topics
        and the forget requests (source ``forget``)."""
        return {t.topic: t.spec.source or t.key for t in self.with_role("input", "request")}

    @property
    def topic_of_source(self) -> dict[str, str]:
        """Source (clickstream, purchases, identify) to its input topic: where a producer sends."""
        return {source: topic for topic, source in self.input_topics.items()}


def topology(settings: Settings) -> Topology:
    """The table's topics for these settings: names prefixed, ``input`` counts resolved."""
    topics = []
    for spec in TOPICS:
        name = settings.topic(getattr(settings, spec.setting))
        count = spec.partitions if isinstance(spec.partitions, int) else settings.partitions
        topics.append(Topic(spec, name, count))
    return Topology(tuple(topics), settings.partitions)
