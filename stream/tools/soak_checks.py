"""The soak's checks at the end of a run (``segmenter soak``), and its report.

Against what was sent, read back from Redis and Kafka once the workers have caught up:

- every customer's canonical value features equal the oracle (``stream.tools.oracle``) over
  the valid messages delivered, exactly, and no record of anyone else;
- every garbage message has a dead letter with a reason at its own position (topic, partition,
  offset) holding its bytes, and no valid message has one;
- the size and membership counters equal a recount of the records.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient

from stream.kafka import client_options, read_topic
from stream.settings import Settings
from stream.store import SegmentClient
from stream.tools.oracle import expected_value_features, feature_mismatches, recount
from stream.tools.soak_traffic import Sent

__all__ = ["Findings", "check", "replace_section", "uncommitted"]

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


@dataclass
class Findings:
    """What the checks found: everything under "lost or wrong" must be zero."""

    customers: int = 0
    wrong_customers: dict[str, Any] = field(default_factory=dict)
    unexpected_records: int = 0
    garbage: int = 0
    garbage_missing: list[Sent] = field(default_factory=list)
    letters: int = 0
    letters_without_reason: int = 0
    valid_dead_lettered: int = 0
    letters_unknown: int = 0
    letters_repeated: int = 0
    sizes_off: dict[str, tuple[int, int]] = field(default_factory=dict)
    members_off: dict[str, tuple[int, int]] = field(default_factory=dict)

    def wrong(self) -> dict[str, int]:
        """Each kind of loss or error, with its count (the goal: all zero)."""
        return {
            "customers with wrong canonical features": len(self.wrong_customers),
            "records of customers never sent": self.unexpected_records,
            "garbage messages without their dead letter": len(self.garbage_missing),
            "dead letters without a reason": self.letters_without_reason,
            "valid messages dead-lettered": self.valid_dead_lettered,
            "dead letters of messages never sent": self.letters_unknown,
            "segments whose size counter differs from a recount": len(self.sizes_off),
            "segments whose membership counter differs from a recount": len(self.members_off),
        }


def check(settings: Settings, delivered: list[Sent], findings: Findings) -> Findings:
    """Run every check against the store and the dead-letter topic; fills ``findings``."""
    valid = [s.out.message for s in delivered if s.out.message is not None]
    expected = expected_value_features(valid)
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix, 10.0)
    try:
        findings.customers = len(expected)
        findings.wrong_customers = feature_mismatches(client, expected)
        recounted_sizes, recounted_members = recount(client)
        findings.unexpected_records = sum(recounted_sizes.values()) - (
            len(expected) - sum(got is None for got, _ in findings.wrong_customers.values())
        )
        findings.sizes_off = _differences(client.sizes(), recounted_sizes)
        findings.members_off = _differences(client.members(), recounted_members)
    finally:
        client.close()
    _match_dead_letters(settings, delivered, findings)
    return findings


def uncommitted(settings: Settings, delivered: list[Sent]) -> dict[str, int]:
    """Per input partition (``topic[p]``), messages delivered there that the group has not
    committed yet (a worker commits a message only once its effects are done)."""
    ends: dict[tuple[str, int], int] = {}
    for s in delivered:
        key = (s.topic, s.partition)
        ends[key] = max(ends.get(key, 0), s.offset + 1)
    admin = KafkaAdminClient(**client_options(settings))
    try:
        group = settings.app_id
        committed = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    got = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}
    lag = {f"{t}[{p}]": end - max(got.get((t, p), 0), 0) for (t, p), end in ends.items()}
    return {k: v for k, v in lag.items() if v > 0}


def _differences(counters: dict[str, int], recounted: dict[str, int]) -> dict[str, tuple[int, int]]:
    names = set(counters) | set(recounted)
    return {
        n: (counters.get(n, 0), recounted.get(n, 0))
        for n in sorted(names)
        if counters.get(n, 0) != recounted.get(n, 0)
    }


def _match_dead_letters(settings: Settings, delivered: list[Sent], findings: Findings) -> None:
    """Each dead letter to the message at its position. A second letter at one position is a
    redelivery (at-least-once: the worker died between publishing it and committing); a letter
    at a position the sender never saw acknowledged but holding a garbage message's bytes is a
    copy the producer sent again after a lost acknowledgement."""
    at = {(s.topic, s.partition, s.offset): s for s in delivered}
    garbage_bytes = {s.out.value for s in delivered if s.out.garbage}
    letters: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    topic = settings.topic(settings.dead_letter_topic)
    for _key, letter in read_topic(settings, topic, timeout=20.0, quiet=3.0):
        findings.letters += 1
        if not isinstance(letter.get("reason"), str) or not letter["reason"]:
            findings.letters_without_reason += 1
        letters[(letter["topic"], letter["partition"], letter["offset"])].append(letter)
    for position, found in letters.items():
        findings.letters_repeated += len(found) - 1
        sent = at.get(position)
        raw = base64.b64decode(found[0]["value_b64"])
        if sent is None:
            findings.letters_unknown += raw not in garbage_bytes
        elif sent.out.garbage is None:
            findings.valid_dead_lettered += 1
    for sent in delivered:
        if sent.out.garbage is None:
            continue
        findings.garbage += 1
        found = letters.get((sent.topic, sent.partition, sent.offset), [])
        if not any(base64.b64decode(x["value_b64"]) == sent.out.value for x in found):
            findings.garbage_missing.append(sent)


def replace_section(path: Path, markdown: str) -> None:
    """Put ``markdown`` between the soak markers of ``path`` (appended with the markers and a
    heading when the file has none)."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{markdown.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## The chaos soak (`make soak`)\n\n" + block + "\n"
    path.write_text(text)
