"""A step's effects, applied in the crash-safe order ``models.step.StepOutcome`` gives."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from models.drift import flow_counts
from models.features import CustomerProfile
from models.step import DeadLetter, StepOutcome
from stream.store import SegmentStore, retry_forever
from stream.store.base import PartitionMark
from stream.worker.faust_adapt import CustomerTable, Record
from stream.worker.metrics import WorkerMetrics
from stream.worker.rebuild import PartitionMarks

log = logging.getLogger(__name__)

__all__ = ["Effects", "Send", "SendMany", "encode_profile", "flows_message"]

#: Hands one record (topic, key, value) to the producer; returns its delivery future.
Send = Callable[[str, bytes | None, bytes | None], Awaitable[Awaitable[Any]]]

#: Hands many records (topic, key, value, partition or None) to the producer in batches
#: (``stream.worker.faust_adapt.RecordBatches.send``); returns the batches' delivery futures.
SendMany = Callable[[list[Record]], Awaitable[list[tuple[Awaitable[Any], int]]]]


def encode_profile(profile: CustomerProfile | None) -> bytes | None:
    """A profile as the table and its changelog hold it (None: erased)."""
    return None if profile is None else orjson.dumps(profile.to_state())


def flows_message(outcome: StepOutcome) -> bytes:
    """A step's entries and exits per segment, at its watermark, as the samples topic carries
    them to the trainer: a JSON object (samples are JSON arrays).

    >>> from models.segments import SegmentChange
    >>> c = SegmentChange("c", "rule:vip", "entered", False, True, 5, "r", 1)
    >>> flows_message(StepOutcome(watermark=9, changes=[c, c]))
    b'{"flows":[["rule:vip","entered",2]],"watermark":9}'
    """
    counts = flow_counts(outcome.changes)
    flows = [[segment, change, n] for (segment, change), n in counts.items()]
    return orjson.dumps({"flows": flows, "watermark": outcome.watermark})


class Effects:
    """Applies a step's outcome: store, then topics, then the table (see ``StepOutcome``).

    With ``marks``, the store writes also advance the markers of the partitions written
    (``stream.worker.rebuild``), in the same pipeline, after the records.
    """

    def __init__(
        self,
        store: SegmentStore,
        table: CustomerTable,
        send_many: SendMany,
        topics: Mapping[str, str],
        worker_id: str,
        metrics: WorkerMetrics,
        marks: PartitionMarks | None = None,
    ) -> None:
        self.store = store
        self.send_many = send_many
        self.table = table
        self.topics = topics  # topology key (changes, samples, dead_letter) -> topic name
        self.worker_id = worker_id
        self.metrics = metrics
        self.marks = marks
        self.counters: dict[str, int] = {}

    async def apply(self, outcome: StepOutcome, encoded: Mapping[str, bytes] | None = None) -> None:
        """``outcome``'s effects, in its order; ``encoded``: states already encoded
        (``encode_profile``, by a backfill's child process), saved with ``outcome.states``."""
        if outcome.erased:
            await retry_forever("Redis forget", self.store.forget_many, outcome.erased)
            await retry_forever("Redis forget", self.store.unalias_many, outcome.erased)
        if outcome.aliases:
            await retry_forever("Redis merge", self.store.merge_many, outcome.aliases)
        # The store write goes out first; the topics' records and the changelog's states are
        # encoded while Redis runs it (the worker's CPU beside that wait, 10-15 ms of a batch
        # of 500 single events), and each is handed over only once the one before it is
        # done: the effects' order is unchanged.
        write = asyncio.ensure_future(
            retry_forever(
                "Redis write",
                self.store.write_many,
                outcome.writes,
                outcome.counters,
                self._marks(outcome),
            )
        )
        try:
            await asyncio.sleep(0)  # the write runs until it waits on Redis
            records = self._records(outcome)
            states = {c: encode_profile(p) for c, p in outcome.states.items()}
        except BaseException:
            # Nothing after the store has happened, and the batch is read again: the write
            # stops (it may be retrying while Redis is away) and is not left running unseen.
            write.cancel()
            await asyncio.gather(write, return_exceptions=True)
            raise
        await write
        await self._publish(outcome, records)
        if encoded:
            states.update(encoded)
        await self.table.write(states)
        for name, by in outcome.counters.items():
            self.counters[name] = self.counters.get(name, 0) + by
        if outcome.erased:
            log.info("forgot %d customers", len(outcome.erased))

    def _marks(self, outcome: StepOutcome) -> list[PartitionMark]:
        """The markers to advance with this outcome's store writes: those this worker holds of
        the partitions it writes or erases customers of."""
        if self.marks is None or not self.marks.held:
            return []
        partition_of = self.table.partition_of
        written = {partition_of.get(w.customer_id) for w in outcome.writes}
        written.update(partition_of.get(c) for c in outcome.erased)
        return self.marks.advance(p for p in written if p is not None)

    def _records(self, outcome: StepOutcome) -> list[Record]:
        """Tombstones, changes, the batch's samples (one JSON array), dead letters and identity
        messages, as records for their topics."""
        changes_topic = self.topics["changes"]
        records: list[Record] = [(changes_topic, c.encode(), None, None) for c in outcome.erased]
        for change in outcome.changes:
            payload = orjson.dumps(change.to_dict())
            records.append((changes_topic, change.customer_id.encode(), payload, None))
        if outcome.samples:
            records.append((self.topics["samples"], None, orjson.dumps(outcome.samples), None))
        if outcome.changes:  # the batch's segment flows, for the trainer's flow drift monitor
            records.append((self.topics["samples"], None, flows_message(outcome), None))
        for letter in outcome.dead:
            records.append(
                (self.topics["dead_letter"], letter.message.key, self._letter(letter), None)
            )
        for key, value in outcome.forwards:
            records.append((self.topics["identity"], key, value, None))
        return records

    async def _publish(self, outcome: StepOutcome, records: list[Record]) -> None:
        """``outcome``'s records (``_records``), all delivered before the table write and the
        acknowledgement."""
        futures = [future for future, _ in await self.send_many(records)] if records else []
        if futures:
            await asyncio.gather(*futures)
        self.counters["changes"] = self.counters.get("changes", 0) + len(outcome.changes)
        for change in outcome.changes:
            self.metrics.changes.labels(change.change).inc()
        if outcome.dead:
            self.metrics.dead_letters.inc(len(outcome.dead))

    def _letter(self, letter: DeadLetter) -> bytes:
        message = letter.message
        topic, _, partition = message.log.rpartition("/")
        # A reason may quote the message (a customer id, a trait): only at debug level here;
        # it travels with the message to the dead-letter topic.
        log.warning(
            "dead letter from %s[%s]@%s (reason on the dead-letter topic)",
            topic,
            partition,
            message.offset,
        )
        log.debug("dead letter from %s[%s]@%s: %s", topic, partition, message.offset, letter.reason)
        return orjson.dumps(
            {
                "reason": letter.reason,
                "topic": topic,
                "partition": int(partition),
                "offset": message.offset,
                "key": message.key.decode("utf-8", "replace") if message.key else None,
                "value_b64": base64.b64encode(message.value or b"").decode(),
                "worker_id": self.worker_id,
                "dead_at": int(time.time() * 1000),
            }
        )
