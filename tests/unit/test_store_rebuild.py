"""The worker's store rebuild (``stream.worker.rebuild``), in-process: the worker's segmenting
shell and effects over the in-memory store, with a dict for the table and a list for the
topics. Redis losing data is the store's state replaced (a FLUSHALL) or rolled back (a failover
to a replica that lagged)."""

from __future__ import annotations

import asyncio
import copy
import random
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from models.clustering import ModelSnapshot
from models.features import FEATURE_VECTOR, CustomerProfile
from models.step import RecordWrite
from stream.settings import Settings
from stream.store import InMemorySegmentStore
from stream.store.base import PartitionMark
from stream.tools.generator import TrafficGenerator
from stream.tools.oracle import recount_records
from stream.worker import segmenting
from stream.worker.app import build_step
from stream.worker.effects import Effects
from stream.worker.metrics import WorkerMetrics
from stream.worker.rebuild import Mark, PartitionMarks, StoreRebuild
from stream.worker.segmenting import Segmenting

APP = "app-1"
PARTITIONS = 2
SOURCES = {s: s for s in ("clickstream", "purchases", "identify", "forget")}
#: What a rebuild leaves as it was: the record's segments, stage and canonical features.
KEPT = ("segment", "persona", "rule_segments", "lifecycle", "event_ts", "events_applied")
CANONICAL = ("orders_total", "revenue_total", "first_seen_ts", "last_seen_ts", "last_purchase_ts")


class SlowStore(InMemorySegmentStore):
    """Yields to the event loop on every write, as a real Redis round trip does."""

    async def write_many(
        self,
        writes: Sequence[RecordWrite],
        counters: Mapping[str, int] = {},
        marks: Sequence[PartitionMark] = (),
    ) -> int:
        await asyncio.sleep(0)
        return await super().write_many(writes, counters, marks)

    def flushall(self) -> None:
        self.__init__()  # type: ignore[misc]

    def state(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def restore(self, state: dict[str, Any]) -> None:
        self.__dict__.update(copy.deepcopy(state))


class Table:
    """What the worker uses of its Faust table."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.partition_of: dict[str, int] = {}
        self.written = 0

    def stored(self) -> Iterator[tuple[str, bytes]]:
        yield from ((k, v) for k, v in list(self.data.items()) if v)

    def stored_ids(self, partitions: Any = None) -> list[str]:
        wanted = partitions
        return [k for k, _ in self.stored() if wanted is None or self.partition_of.get(k) in wanted]

    def load(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def write(self, values: Mapping[str, bytes | None]) -> None:
        await asyncio.sleep(0)
        for key, value in values.items():
            self.written += 1
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


def model(version: int, seed: int) -> ModelSnapshot:
    rng = random.Random(seed)
    centres = tuple(tuple(rng.random() for _ in FEATURE_VECTOR) for _ in range(4))
    return ModelSnapshot(version, tuple(FEATURE_VECTOR), centres, (10, 10, 10, 10))


class Worker:
    def __init__(self, chunk: int = 7, worker_id: str = "w1") -> None:
        self.store = SlowStore()
        self.table = Table()
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.owned = set(range(PARTITIONS))
        self.offsets: dict[tuple[str, int], int] = {}
        metrics = WorkerMetrics()
        self.marks = PartitionMarks(APP, worker_id)
        topics = {"changes": "changes", "samples": "samples", "dead_letter": "dead"}
        table: Any = self.table
        self.effects = Effects(
            self.store, table, self.send_many, topics, worker_id, metrics, self.marks
        )
        step = build_step(Settings(worker_id=worker_id, max_future_skew_seconds=0))
        self.seg = Segmenting(
            step, table, self.effects, self.store, SOURCES, lambda: set(self.owned), metrics, 50
        )
        self.rebuild = StoreRebuild(
            self.seg, self.store, self.marks, table_partitions=2, chunk=chunk
        )

    async def send(self, topic: str, key: bytes | None, value: bytes | None) -> Any:
        self.sent.append((topic, key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_many(self, records: list[Any]) -> list[tuple[Any, int]]:
        """As ``RecordBatches.send``: here one delivery future per record."""
        return [(await self.send(topic, key, value), 1) for topic, key, value, _ in records]

    def changes(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for t, _, v in self.sent if t == "changes" and v]

    async def handle(
        self, messages: Iterable[Any], current: Callable[[], bool] | None = None
    ) -> None:
        batch = []
        for m in messages:
            events = m.value if isinstance(m.value, list) else [m.value]
            partition = zlib.crc32(m.key.encode()) % PARTITIONS
            offset = self.offsets[(m.source, partition)] = (
                self.offsets.get((m.source, partition), -1) + 1
            )
            batch.append(
                SimpleNamespace(
                    topic=m.source,
                    partition=partition,
                    offset=offset,
                    key=m.key.encode(),
                    value=orjson.dumps(events),
                    timestamp=time.time(),
                )
            )
        for i in range(0, len(batch), 50):
            await self.seg.handle(batch[i : i + 50], current)

    async def check(self) -> None:
        """One store check, and the rebuild it starts run to its end."""
        await self.rebuild.check()
        if self.rebuild.task is not None:
            await self.rebuild.task

    def profiles(self) -> dict[str, CustomerProfile]:
        return {c: CustomerProfile.from_state(orjson.loads(raw)) for c, raw in self.table.stored()}

    async def records(self) -> dict[str, dict[str, Any]]:
        out = {}
        for customer_id in self.profiles():
            record = await self.store.get(customer_id)
            assert record is not None, customer_id
            out[customer_id] = record
        return out

    async def assert_exact(self) -> None:
        """Every customer's record says what their profile holds; counters are a recount."""
        records = await self.records()
        for customer_id, p in self.profiles().items():
            r = records[customer_id]
            assert (r["event_ts"], r["events_applied"]) == (p.last_seen_ts, p.applied)
            assert (r["segment"], r["persona"]) == (p.segment, p.persona), customer_id
            assert (r["rule_segments"], r["lifecycle"]) == (p.rule_segments, p.lifecycle)
            assert r["features"]["orders_total"] == p.orders_total
        sizes, members = recount_records(records.values())
        assert await self.store.sizes() == sizes
        assert await self.store.members() == members


def traffic(customers: int = 40, sessions: int = 3, seed: int = 3) -> tuple[TrafficGenerator, list]:
    g = TrafficGenerator(customers=customers, seed=seed, session_gap_ms=3_600_000)
    return g, [m for _ in range(sessions) for c in g.customer_ids for m in g.session(c)]


def kept(records: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {
        c: (*(r[k] for k in KEPT), *(r["features"][k] for k in CANONICAL))
        for c, r in records.items()
    }


async def started(worker: Worker, first_model: ModelSnapshot | None = None) -> list:
    """A worker whose markers are written (a fresh deployment), after its traffic."""
    await worker.check()
    assert worker.rebuild.status()["rebuilt"] == 0
    worker.seg.model = first_model
    if first_model is not None:
        await worker.store.publish_model(first_model.to_dict())
    _, messages = traffic()
    await worker.handle(messages)
    return messages


def test_a_flushed_store_is_rebuilt_exactly_and_no_change_is_published():
    async def run() -> None:
        w = Worker()
        await started(w, model(1, 1))
        before = await w.records()
        counters = (await w.store.sizes(), await w.store.members())
        sent, written = len(w.sent), w.table.written
        marks = await w.store.partition_marks(APP, [0, 1])
        assert all(Mark.decode(raw) is not None for raw in marks[1].values())

        w.store.flushall()
        await w.check()

        status = w.rebuild.status()
        assert status["total"] == status["done"] == status["rebuilt"] == len(before) == 40
        assert status["partitions"] == [0, 1] and status["reason"] == "no marker"
        assert status["running"] is False and status["finished_at"]
        assert kept(await w.records()) == kept(before)
        assert (await w.store.sizes(), await w.store.members()) == counters
        await w.assert_exact()
        # Only store writes: no change on the topics, no state to the table.
        assert len(w.sent) == sent and w.table.written == written
        assert (await w.store.stats())["rebuilt"] == 40
        # The model Redis lost is back: the one the worker serves.
        assert await w.store.model_version() == 1
        # Rebuilt once: the next check finds every marker as the worker left it.
        await w.check()
        assert w.rebuild.status()["rebuilt"] == 40

    asyncio.run(run())


def test_live_batches_run_between_the_chunks_and_keep_the_newest_state():
    async def run() -> None:
        w = Worker(chunk=3)
        await started(w, model(1, 1))
        g, more = traffic(seed=3)  # the same customers (same seed), sessions later
        more = [m for _ in range(2) for c in g.customer_ids for m in g.session(c)]
        w.store.flushall()
        await w.rebuild.check()
        assert w.rebuild.running
        seen_running = []
        for i in range(0, len(more), 10):
            await w.handle(more[i : i + 10])
            seen_running.append(w.rebuild.running)
        assert w.rebuild.task is not None
        await w.rebuild.task
        assert seen_running[0], "a live batch ran between the chunks, not after the rebuild"
        assert w.rebuild.status()["done"] == 40
        await w.assert_exact()

    asyncio.run(run())


def test_a_store_that_went_back_in_time_is_noticed_by_its_marker_and_rebuilt():
    async def run() -> None:
        w = Worker()
        messages = await started(w, model(1, 1))
        lagging = w.store.state()  # a replica, behind by the next batches
        g, _ = traffic()
        await w.handle([m for c in g.customer_ids[:10] for m in g.session(c)])
        w.store.restore(lagging)  # the failover
        assert len(messages) and (await w.records()) != {}
        stale = await w.records()
        assert any(stale[c]["events_applied"] != p.applied for c, p in w.profiles().items())

        await w.check()
        assert w.rebuild.status()["reason"].startswith("Redis is behind this worker")
        await w.assert_exact()

    asyncio.run(run())


def test_another_workers_marker_is_taken_over_and_a_request_rebuilds_everything():
    async def run() -> None:
        w = Worker()
        await started(w, model(1, 1))
        w.owned = set()  # a rebalance takes the partitions away...
        await w.check()
        # ... another worker owned them meanwhile and left its markers ...
        other = PartitionMarks(APP, "w0")
        for p in range(PARTITIONS):
            assert await w.store.put_partition_mark(APP, p, other.new(0).encode())
        w.owned = set(range(PARTITIONS))  # ... and they come back
        await w.check()
        assert w.rebuild.status()["rebuilt"] == 0
        _, marks = await w.store.partition_marks(APP, [0, 1])
        assert {Mark.decode(raw).worker_id for raw in marks.values()} == {"w1"}  # type: ignore[union-attr]

        assert await w.store.request_rebuild(APP) == 1
        await w.check()
        status = w.rebuild.status()
        assert status["rebuilt"] == 40 and status["request"] == 1
        assert status["reason"] == "rebuild request 1"
        request, marks = await w.store.partition_marks(APP, [0, 1])
        assert request == 1
        assert {Mark.decode(raw).request for raw in marks.values()} == {1}  # type: ignore[union-attr]
        await w.check()
        assert w.rebuild.status()["rebuilt"] == 40  # answered once

    asyncio.run(run())


def test_writes_advance_the_markers_but_never_bring_a_lost_one_back():
    async def run() -> None:
        w = Worker()
        await started(w)
        _, before = await w.store.partition_marks(APP, [0, 1])
        # A new customer's session dated before the watermark: it moves event time on for no
        # one else (no other customer's session end or lifecycle stage comes due).
        g = TrafficGenerator(customers=40, seed=4, session_gap_ms=3_600_000)
        await w.handle(g.session(g.customer_ids[0]))
        _, after = await w.store.partition_marks(APP, [0, 1])
        moved = [p for p in (0, 1) if before[p] != after[p]]
        assert len(moved) == 1
        assert Mark.decode(after[moved[0]]).seq > Mark.decode(before[moved[0]]).seq  # type: ignore[union-attr]

        w.store.flushall()
        await w.handle(g.session(g.customer_ids[0]))
        _, lost = await w.store.partition_marks(APP, [0, 1])
        assert lost == {0: None, 1: None}

    asyncio.run(run())


def test_a_newer_model_moves_customers_with_their_changes_published_and_saved():
    async def run() -> None:
        w = Worker()
        await started(w, model(1, 1))
        w.store.flushall()
        w.seg.model = model(2, 99)  # the model moved on since they were last scored
        sent, written = len(w.sent), w.table.written
        await w.check()
        moves = w.changes()[len([1 for t, _, v in w.sent[:sent] if t == "changes" and v]) :]
        assert moves, "some customers are nearer another centre of the new model"
        assert {c["segment"].split(":")[0] for c in moves} <= {"cluster", "rule"}
        assert w.table.written - written == len({c["customer_id"] for c in moves})
        await w.assert_exact()  # the records, the table and the changes agree

    asyncio.run(run())


def test_no_rebuild_without_a_model_while_customers_have_clusters():
    async def run() -> None:
        w = Worker()
        await started(w, model(1, 1))
        w.store.flushall()
        w.seg.model = None  # a worker started after Redis lost the model
        await w.check()
        assert w.rebuild.status()["waiting"] == "model"
        assert await w.store.sizes() == {}
        w.seg.model = model(1, 1)
        await w.check()
        assert w.rebuild.status()["waiting"] is None
        await w.assert_exact()

    asyncio.run(run())


def test_partitions_of_another_worker_are_left_alone():
    async def run() -> None:
        w = Worker()
        await started(w, model(1, 1))
        w.store.flushall()
        w.owned = {1}
        await w.check()
        parts = {c: w.table.partition_of[c] for c in w.profiles()}
        for customer_id, p in parts.items():
            assert ((await w.store.get(customer_id)) is None) == (p == 0), customer_id
        request, marks = await w.store.partition_marks(APP, [0, 1])
        assert marks[0] is None and marks[1] is not None

    asyncio.run(run())


@pytest.mark.parametrize("raw", [b"garbage", b'{"request": 1}', b"[]"])
def test_an_unreadable_marker_counts_as_missing(raw):
    assert Mark.decode(raw) is None


def test_a_rollback_to_before_this_worker_took_the_partition_over_is_noticed():
    async def run() -> None:
        w = Worker()
        other = PartitionMarks(APP, "w0")
        for p in range(PARTITIONS):
            await w.store.put_partition_mark(APP, p, other.new(0).encode())
        before = w.store.state()  # the previous owner's markers, and no records
        await w.check()  # taken over, no rebuild
        assert w.rebuild.status()["rebuilt"] == 0
        _, messages = traffic()
        await w.handle(messages)
        w.store.restore(before)
        await w.check()
        assert w.rebuild.status()["reason"].startswith("Redis is behind this worker")
        await w.assert_exact()

    asyncio.run(run())


def test_a_batch_taken_before_a_rebalance_or_during_recovery_is_left_out_not_applied():
    """Found by the chaos soak: a batch in flight when partitions were revoked found no
    profile of its customers (their partitions were no longer owned), applied its events to
    new, empty profiles and wrote those shorter states to the table and the changelog; the
    customers' earlier purchases were lost. Such a batch is now left out (released, read again
    from the committed offsets by the next owner), as is one during the table's recovery."""

    async def run() -> None:
        w = Worker()
        g = TrafficGenerator(customers=20, seed=2, session_gap_ms=60_000)
        await w.handle([m for c in g.customer_ids for m in g.session(c)])
        before = {c: p.applied for c, p in w.profiles().items()}
        written = w.table.written
        later = [m for c in g.customer_ids for m in g.session(c)]

        w.owned = set()  # revoked while the batch was taken
        await w.handle(later)
        w.owned = set(range(PARTITIONS))
        w.seg.ready = lambda: False  # assigned again, the table still recovering
        await w.handle(later)
        assert w.table.written == written
        assert {c: p.applied for c, p in w.profiles().items()} == before

        w.seg.ready = lambda: True
        # Taken before a rebalance that is over when the batch gets the lock (held through
        # it): the partitions are owned again and read again from their committed offsets.
        await w.handle(later, current=lambda: False)
        assert w.table.written == written

        # Recovered: the messages read again are applied whole.
        await w.handle(later, current=lambda: True)
        events = {c: 0 for c in before}
        for m in later:
            events[m.key] += m.events
        assert {c: p.applied for c, p in w.profiles().items()} == {
            c: n + events[c] for c, n in before.items()
        }

    asyncio.run(run())


def test_after_a_rebalance_batches_run_before_the_schedule_is_known_and_it_comes_out_whole():
    """A restarted worker used to compute every owned customer's due time in one pass under
    the lock before its first batch (28 s at 200,000 customers). Now the batch comes first and
    the schedule follows in slices, from the watermark at the takeover: a threshold the
    watermark passed meanwhile still comes due."""

    async def run() -> None:
        w = Worker()
        g = TrafficGenerator(customers=30, seed=4, session_gap_ms=3_600_000)
        await w.handle([m for c in g.customer_ids for m in g.session(c)])
        catalog = w.seg.step.catalog_for(w.seg.model)
        taken_at = w.seg.watermark

        w.owned = set(range(1, PARTITIONS))  # partition 0 goes, then comes back
        w.seg.owned()
        w.owned = set(range(PARTITIONS))
        first = [m for c in g.customer_ids[:3] for m in g.session(c)]
        await w.handle(first)  # applied at once, the schedule not known yet
        assert not w.seg.scheduled and w.seg.watermark > taken_at
        touched = {m.key for m in first}
        scored = {c: w.seg.schedule.due_of(c) for c in touched}

        await w.seg.schedule_pending(budget=0.0)  # one customer a slice
        assert w.seg.scheduled
        for customer_id, p in w.profiles().items():
            if customer_id in touched:
                assert w.seg.schedule.due_of(customer_id) == scored[customer_id]
            else:
                at = max(taken_at, p.last_seen_ts or 0)
                assert w.seg.schedule.due_of(customer_id) == catalog.next_change(p, at)
        assert len(w.seg.schedule) > len(touched)

    asyncio.run(run())


def test_a_first_models_chunks_let_a_batch_waiting_in_the_feed_go_first(monkeypatch):
    """The app's loop asks for the lock only once it has taken its batch from the feed (up to
    ``batch_within`` after the messages came): a background loop that took the lock again as
    soon as it let it go would run chunk after chunk meanwhile. Chunks of one customer here:
    at most the chunk under way when the messages came runs before their batch."""
    monkeypatch.setattr(segmenting, "LIVE_FIRST", 60.0)  # order, not the deadline, here

    async def run() -> None:
        w = Worker()
        await started(w)
        waiting: list[int] = []
        asks = [0]  # how often the background asked whether messages wait

        def live_waiting() -> bool:
            asks[0] += 1
            return bool(waiting)

        w.seg.live_waiting = live_waiting
        chunks: list[int] = []
        w.seg.step = _CountedRescores(w.seg.step, chunks)  # type: ignore[assignment]
        w.seg.model = model(1, 1)
        w.seg._unassigned = True
        background = asyncio.ensure_future(w.seg.assign_unassigned(budget=0.0))

        async def until(condition: Callable[[], bool]) -> None:  # polled, with a deadline
            deadline = asyncio.get_running_loop().time() + 30
            while not condition() and not background.done():
                assert asyncio.get_running_loop().time() < deadline, "no progress in 30 s"
                await asyncio.sleep(0)

        ran_before: list[int] = []
        while not background.done() and len(ran_before) < 10:
            seen = len(chunks)
            await until(lambda seen=seen: len(chunks) > seen)  # the background runs
            waiting.append(1)  # messages come into the feed
            before, asked = len(chunks), asks[0]
            # The loop takes them a while later (``batch_within``): here, once the background
            # has been seen waiting for them (it asked three times) or has run on (two chunks).
            await until(lambda a=asked, b=before: asks[0] >= a + 3 or len(chunks) >= b + 2)
            waiting.clear()
            async with w.seg.lock:  # and then asks for the lock
                ran_before.append(len(chunks) - before)
        await background
        assert max(ran_before) <= 1, ran_before
        assert len(ran_before) >= 5, "the background work ended before the test's batches"

    asyncio.run(run())


def test_background_work_waits_for_a_live_batch_only_so_long(monkeypatch):
    """No message waiting in the feed, or their batch already asking for the lock: background
    work goes on at once. Messages that stay in the feed (the loop busy elsewhere) hold it off
    for ``LIVE_FIRST`` at most."""
    monkeypatch.setattr(segmenting, "LIVE_FIRST", 0.05)

    def at_once(seg: Segmenting) -> bool:
        waiting = seg.yield_to_live()
        try:
            waiting.send(None)  # a coroutine that does not wait returns on its first step
        except StopIteration:
            return True
        waiting.close()
        return False

    async def run() -> None:
        w = Worker()
        assert at_once(w.seg)
        w.seg.live_waiting = lambda: True
        w.seg._live_turn = True
        assert at_once(w.seg)
        w.seg._live_turn = False
        assert not at_once(w.seg)
        t0 = time.monotonic()
        await asyncio.wait_for(w.seg.yield_to_live(), 30.0)
        assert time.monotonic() - t0 >= 0.05

    asyncio.run(run())


class _CountedRescores:
    """A step whose ``rescore`` calls are counted, everything else its own (a wrapper, not a
    patched method: the compiled build's step takes no attribute of its own)."""

    def __init__(self, step: Any, calls: list[int]) -> None:
        self._step = step
        self._calls = calls

    def rescore(self, *args: Any, **kwargs: Any) -> Any:
        self._calls.append(1)
        return self._step.rescore(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)
