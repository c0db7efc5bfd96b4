"""Published segment and persona definitions: the versioned messages ``segmenter segments apply``
and ``segmenter personas apply`` write to the definitions topic, and every worker reads.

The topic has one partition, is compacted and keyed by kind (``segments``, ``personas``). A
message holds a file's text as written, its SHA-256 and a version number: one more than the
newest of either kind, so one number names the whole set in force (the higher of the two
kinds' versions), and records and ``segment-changes`` carry it (``definitions_version``; 0:
the files of the settings, nothing published). Every message is sent alone and flushed, so a
broker that reports a partition's end as its last batch's first offset + 1 (Tansu) still
reports the true end here.

>>> d = PublishedDefinitions("segments", 3, file_version("segments: {}\\n"), "segments: {}\\n",
...                          "vip.yaml", 1795000000000)
>>> PublishedDefinitions.decode(b"segments", d.encode()) == d
True
>>> PublishedDefinitions.decode(b"segments", b"not json") is None
True
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
from kafka import KafkaConsumer, TopicPartition

from stream.catalog import CatalogError, file_version, load_personas, load_segments
from stream.kafka import client_options, ensure_topics, make_producer, wait_for_broker
from stream.settings import Settings

__all__ = [
    "KINDS",
    "DefinitionsReader",
    "PublishedDefinitions",
    "definitions_version",
    "newest",
    "publish_definitions",
    "read_definitions",
]

#: The kinds of definitions, as the topic's keys.
KINDS = ("segments", "personas")


@dataclass(frozen=True, slots=True)
class PublishedDefinitions:
    """One published definitions file."""

    kind: str  # segments or personas
    version: int
    sha256: str  # file_version(text)
    text: str
    source: str  # the file it was applied from, for messages
    published_at: int  # wall clock, ms

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, key: bytes | None, value: bytes | None) -> PublishedDefinitions | None:
        """The message, or None if it is not one (a tombstone, another key, garbage)."""
        if value is None or key is None or key.decode(errors="replace") not in KINDS:
            return None
        try:
            d = orjson.loads(value)
            return cls(
                str(d["kind"]),
                int(d["version"]),
                str(d["sha256"]),
                str(d["text"]),
                str(d.get("source", "")),
                int(d.get("published_at", 0)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def check(self) -> None:
        """Compile the text as a worker does at start-up; raises ``CatalogError``."""
        if self.kind == "segments":
            load_segments(text=self.text, source=self.source)
        else:
            load_personas(text=self.text, source=self.source)


def newest(
    found: Iterable[PublishedDefinitions], than: Mapping[str, PublishedDefinitions] | None = None
) -> dict[str, PublishedDefinitions]:
    """The newest definitions per kind among ``found`` and ``than``.

    >>> a, b = (PublishedDefinitions("segments", v, "", "", "", 0) for v in (1, 2))
    >>> [d.version for d in newest([b, a]).values()]
    [2]
    """
    out = dict(than or {})
    for d in found:
        if d.kind not in out or d.version > out[d.kind].version:
            out[d.kind] = d
    return out


def definitions_version(in_force: Mapping[str, PublishedDefinitions]) -> int:
    """The one number of a set in force (0: nothing published)."""
    return max((d.version for d in in_force.values()), default=0)


class DefinitionsReader:
    """Reads the definitions topic from the beginning, then on from where it stopped.

    Not in a consumer group: every worker needs every message. ``read_new`` returns what was
    published since the last call, up to the end the broker reports.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(settings.definitions_topic)
        self.tp = TopicPartition(self.topic, 0)
        self.consumer = KafkaConsumer(
            **client_options(settings), enable_auto_commit=False, group_id=None
        )
        self.consumer.assign([self.tp])
        self.consumer.seek_to_beginning(self.tp)

    def read_new(self, timeout: float = 5.0) -> list[PublishedDefinitions]:
        end = self.consumer.end_offsets([self.tp]).get(self.tp, 0)
        out: list[PublishedDefinitions] = []
        deadline = time.monotonic() + timeout
        while self.consumer.position(self.tp) < end and time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=200).values():
                for m in records:
                    found = PublishedDefinitions.decode(m.key, m.value)
                    if found is not None:
                        out.append(found)
        return out

    def close(self) -> None:
        self.consumer.close()


def read_definitions(settings: Settings) -> dict[str, PublishedDefinitions]:
    """The newest published definitions of each kind (empty: none published)."""
    reader = DefinitionsReader(settings)
    try:
        return newest(reader.read_new())
    finally:
        reader.close()


def publish_definitions(
    settings: Settings, kind: str, path: Path
) -> tuple[PublishedDefinitions, bool]:
    """Validate a file as a worker does at start-up, then publish it with the next version;
    ``(definitions, published)``: not published when the same text is in force already.

    Raises ``CatalogError`` (the file, the segment or persona and the line) for a bad file,
    before anything is sent.
    """
    if not path.is_file():
        raise CatalogError(f"{path}: no such file")
    text = path.read_text()
    wanted = PublishedDefinitions(
        kind, 0, file_version(text), text, str(path), int(time.time() * 1000)
    )
    wanted.check()
    wait_for_broker(settings)
    ensure_topics(settings)
    in_force = read_definitions(settings)
    current = in_force.get(kind)
    if current is not None and current.sha256 == wanted.sha256:
        return current, False
    version = definitions_version(in_force) + 1
    published = PublishedDefinitions(
        kind, version, wanted.sha256, text, str(path), int(time.time() * 1000)
    )
    producer = make_producer(settings, acks="all")
    try:
        producer.send(
            settings.topic(settings.definitions_topic), key=kind, value=published.encode()
        )
        producer.flush()
    finally:
        producer.close()
    return published, True
