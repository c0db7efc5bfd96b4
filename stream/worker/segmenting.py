"""The segmenting agent's work: a batch of Faust events through the pure step, then effects."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager

import orjson
from faust.types import Message

from models.clustering import ModelSnapshot
from models.features import CustomerProfile
from models.schedule import DueSchedule
from models.step import FORGET, ProfileSource, SegmentStep, SourceMessage, StepOutcome
from stream.store import SegmentStore
from stream.worker.effects import Effects
from stream.worker.faust_adapt import CustomerTable
from stream.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

__all__ = ["Segmenting", "TableProfiles"]


class TableProfiles:
    """The step's ``ProfileSource`` over the table, with live profiles kept between batches.

    The table holds each profile's serialized state (what its changelog carries); decoding it
    every batch cost a JSON round trip per customer. The newest ``limit`` profiles used stay
    live here, the objects the step updated and the effects wrote. Only profiles of owned
    partitions are served; the live ones are dropped when ownership changes (the table may
    have been recovered) and after a failed batch (they may be ahead of the table).
    """

    def __init__(self, table: CustomerTable, limit: int) -> None:
        self.table = table
        self.limit = limit
        self.owned: set[int] = set()
        self._live: OrderedDict[str, CustomerProfile] = OrderedDict()

    def get(self, customer_id: str) -> CustomerProfile | None:
        return self._get(customer_id, True)

    def passing(self) -> ProfileSource:
        """The same profiles, read without keeping them live (a backfill reads every customer
        once: keeping each would push the live traffic's profiles out). What the step changes
        and the effects save is kept all the same."""
        return _Passing(self)

    def _get(self, customer_id: str, keep: bool) -> CustomerProfile | None:
        if self.table.partition_of.get(customer_id) not in self.owned:
            return None
        live = self._live.get(customer_id)
        if live is not None:
            if keep:
                self._live.move_to_end(customer_id)
            return live
        raw = self.table.load(customer_id)
        if not raw:
            return None
        profile = CustomerProfile.from_state(orjson.loads(raw), owned=True)
        if keep:
            self._keep(customer_id, profile)
        return profile

    def saved(self, states: Mapping[str, CustomerProfile | None]) -> None:
        """The table now holds these states (None: erased)."""
        for customer_id, profile in states.items():
            if profile is None:
                self._live.pop(customer_id, None)
            else:
                self._keep(customer_id, profile)

    def drop_live(self) -> None:
        self._live.clear()

    def forget(self, customer_ids: Iterable[str]) -> None:
        """These customers' live profiles, if any, are older than the table's: dropped."""
        for customer_id in customer_ids:
            self._live.pop(customer_id, None)

    def _keep(self, customer_id: str, profile: CustomerProfile) -> None:
        if self.limit <= 0:
            return
        self._live[customer_id] = profile
        self._live.move_to_end(customer_id)
        while len(self._live) > self.limit:
            self._live.popitem(last=False)


#: Seconds of work a slice of the schedule's computation after a rebalance takes under the
#: segmenting lock (``Segmenting.schedule_pending``).
SCHEDULE_SLICE = 0.05

#: Seconds of scoring in a chunk of a first model's assignments under the segmenting lock
#: (``Segmenting.assign_unassigned``); its effects (Redis, the topics, the table) come on top,
#: about as long again.
ASSIGN_SLICE = 0.02

#: Due customers an empty step of the timer's re-evaluates (``Segmenting.expire_due``): about
#: 10-20 ms of scoring, live batches between them; the chunks of one call stop after
#: ``EXPIRY_BUDGET`` seconds (the timer runs every second).
EXPIRY_CHUNK = 200
EXPIRY_BUDGET = 0.5

#: Longest a chunk of background work waits for the live batch whose messages wait in the
#: feed to take the segmenting lock first (``Segmenting.yield_to_live``), in seconds.
LIVE_FIRST = 0.1


class _Passing:
    def __init__(self, profiles: TableProfiles) -> None:
        self.profiles = profiles

    def get(self, customer_id: str) -> CustomerProfile | None:
        return self.profiles._get(customer_id, False)


class Segmenting:
    """Turns Faust batches into ``SourceMessage``s, runs the step, applies its effects."""

    def __init__(
        self,
        step: SegmentStep,
        table: CustomerTable,
        effects: Effects,
        store: SegmentStore,
        sources: Mapping[str, str],
        owned_partitions: Callable[[], set[int]],
        metrics: WorkerMetrics,
        profile_cache: int = 0,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.step = step
        self.profiles = TableProfiles(table, profile_cache)
        self.table = table
        self.effects = effects
        self.store = store
        self.sources = sources  # topic -> source kind (clickstream, purchases, identify, forget)
        self.owned_partitions = owned_partitions
        self.metrics = metrics
        #: False while partitions move (a rebalance, the table's recovery): nothing is applied.
        self.ready = ready
        #: Whether input messages wait to be taken (the app's feed sets it): background work
        #: lets their batch go first (``yield_to_live``).
        self.live_waiting: Callable[[], bool] = lambda: False
        self._live_turn = False  # a live batch is queued for the lock or holds it
        self._unassigned = False  # the first model came: customers seen before it to assign
        self.model: ModelSnapshot | None = None
        self.watermark = 0  # the newest event time this worker has applied
        self.schedule = DueSchedule()
        self._scheduled_for: set[int] = set()
        self._to_schedule: list[str] = []  # owned customers whose due time is not known yet
        self._schedule_from = 0  # the watermark when they were taken over
        #: Owned partitions that were empty in the table when taken over and whose store marker
        #: has not been written yet (see stream/worker/rebuild.py).
        self.fresh_partitions: set[int] = set()
        self.offsets: dict[tuple[str, int], int] = {}  # newest offset handled per partition
        self.lock = asyncio.Lock()

    async def handle(
        self, batch: Sequence[Message], current: Callable[[], bool] | None = None
    ) -> list[Message]:
        """Apply a batch of input messages; returns once every effect is done, with the
        messages applied.

        Only messages of partitions this worker owns, outside a rebalance, are applied: a batch
        taken before partitions were revoked, or while the table is recovered, would read
        profiles that are not (or not yet) this worker's, and write states older than the
        changelog's. Nor a batch taken before a rebalance that is over when it gets the lock
        (``current`` false: the lock was held through the rebalance, by a batch retrying its
        Redis write, say): the partitions are owned again and read again from their committed
        offsets, so its messages would be applied ahead of earlier ones, which the profiles'
        position guard then skips as applied. The messages left out are read again from the
        committed offsets by whoever owns their partition next.
        """
        started = time.perf_counter()
        self._live_turn = True  # queued for the lock or holding it: background work waits
        try:
            async with self.lock:
                owned = self._owned()
                if not self.ready() or (current is not None and not current()):
                    return []
                batch = [m for m in batch if m.partition in owned]
                if not batch:
                    return []
                outcome = await self._apply_batch(batch)
        finally:
            self._live_turn = False
        self._observe(batch, outcome, time.perf_counter() - started)
        return list(batch)

    async def yield_to_live(self) -> None:
        """Before a chunk of a first model's assignments or of the schedule after a rebalance
        takes the lock: let the live batch whose messages wait in the feed ask for it first,
        waiting at most ``LIVE_FIRST``; the chunk then waits its turn behind that batch.

        The lock serves its waiters in turn, but the segmenting loop asks for it only once it
        has taken its batch from the feed (up to ``batch_within`` after the first message): a
        background loop that took the lock again as soon as it let it go held live events
        off for a second chunk, and more (a first model's 1,018 assignments in two chunks of
        500 held them 0.75 s; the freshness bench's p99 at 200 events/s was 0.4 s).

        Not for a definitions backfill or a store rebuild: under live traffic the feed is
        rarely empty, and a backfill that let every batch go first took 50 s against 34 s
        (``segmenter bench --only 'live definitions'``, one run each), its freshness no
        better.
        """
        deadline = time.monotonic() + LIVE_FIRST
        while self.live_waiting() and not self._live_turn:
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.001)

    @asynccontextmanager
    async def _background_turn(self) -> AsyncIterator[bool]:
        """A chunk of background work's turn (the schedule after a rebalance, a first model's
        assignments, due customers): after the live batch waiting for the lock
        (``yield_to_live``), under the lock, the owned partitions taken in (``_owned``).
        Yields False, the partitions not taken in, while they move: the chunk is left for a
        later call."""
        await self.yield_to_live()
        async with self.lock:
            if not self.ready():
                yield False
            else:
                self._owned()
                yield True

    async def expire_due(self) -> None:
        """Due times left to compute since a rebalance first (``schedule_pending``); then
        re-evaluate customers the batches left due (a batch takes about as many as it has
        messages, ``SegmentStep.run``): empty steps of ``EXPIRY_CHUNK`` customers, as a batch
        would run them, ``SegmentStep.max_expiries`` and ``EXPIRY_BUDGET`` seconds a call at
        most, live batches first between them (``yield_to_live``)."""
        await self.schedule_pending()
        left, deadline = self.step.max_expiries, time.monotonic() + EXPIRY_BUDGET
        while left > 0 and self.schedule.has_due(self.watermark) and self.ready():
            if time.monotonic() >= deadline and left < self.step.max_expiries:
                return  # the rest on the next call
            async with self._background_turn() as settled:
                if not settled:
                    return
                chunk = min(EXPIRY_CHUNK, left)
                await self._apply_batch([], chunk)
                left -= chunk

    async def _apply_batch(
        self, batch: Sequence[Message], expiries: int | None = None
    ) -> StepOutcome:
        messages = []
        for m in batch:
            messages.append(
                SourceMessage(
                    self.sources[m.topic], f"{m.topic}/{m.partition}", m.offset, m.key, m.value
                )
            )
            if m.key:
                customer_id = m.key.decode("utf-8", "replace")
                # An erasure request's partition is the forget topic's; the customer's events
                # (and so the changelog) keep theirs.
                if self.sources[m.topic] != FORGET or customer_id not in self.table.partition_of:
                    self.table.partition_of[customer_id] = m.partition
        try:
            outcome = self.step.run(
                messages,
                self.profiles,
                self.model,
                self.watermark,
                self.schedule,
                now_ms=int(time.time() * 1000),
                clock=time.monotonic(),
                expiries=expiries,
            )
            await self.effects.apply(outcome)
        except BaseException:
            self.profiles.drop_live()
            raise
        self.profiles.saved(outcome.states)
        self.watermark = outcome.watermark
        return outcome

    def _observe(self, batch: Sequence[Message], outcome: StepOutcome, seconds: float) -> None:
        self.metrics.batch_seconds.observe(seconds)
        now = time.time()
        per_topic: dict[str, int] = {}
        for m in batch:
            per_topic[m.topic] = per_topic.get(m.topic, 0) + 1
            self.metrics.event_delay.observe(max(0.0, now - m.timestamp))
            key = (m.topic, m.partition)
            self.offsets[key] = max(self.offsets.get(key, -1), m.offset)
        for topic, n in per_topic.items():
            self.metrics.messages.labels(topic).inc(n)
        for topic, source in self.sources.items():
            if source in outcome.events:
                self.metrics.events.labels(topic).inc(outcome.events[source])

    def owned(self) -> set[int]:
        """The partitions owned now (call under ``self.lock``): after a rebalance, their
        customers are scheduled anew and the live profiles dropped first."""
        return self._owned()

    async def apply(self, outcome: StepOutcome, encoded: Mapping[str, bytes] | None = None) -> None:
        """Apply an outcome of the step outside a batch (under ``self.lock``), keeping its
        states live; after a failure the live profiles are dropped (they may be ahead of the
        table), as after a failed batch. ``encoded``: states saved as they are (a backfill's
        child process encoded them); those customers' live profiles are dropped, to be read
        from the table again."""
        try:
            await self.effects.apply(outcome, encoded)
        except BaseException:
            self.profiles.drop_live()
            raise
        self.profiles.saved(outcome.states)
        if encoded:
            self.profiles.forget(encoded)

    def _owned(self) -> set[int]:
        """The partitions owned now; after a rebalance, their customers are to be scheduled
        anew (``schedule_pending``)."""
        owned = self.owned_partitions()
        if owned != self._scheduled_for:
            self.profiles.owned = owned
            self.profiles.drop_live()
            self.schedule.clear()
            populated: set[int] = set()
            pending: list[str] = []
            partition_of = self.table.partition_of
            for customer_id in self.table.stored_ids():
                partition = partition_of.get(customer_id)
                if partition in owned:
                    populated.add(partition)
                    pending.append(customer_id)
            # Computed in the background, from the watermark now: a threshold the watermark
            # passes meanwhile still comes due.
            self._to_schedule, self._schedule_from = pending, self.watermark
            # Partitions taken over with nothing in the table: Redis holds nothing of them
            # that could be lost, so a missing store marker there is new, not a loss.
            self.fresh_partitions = (self.fresh_partitions & owned) | (
                owned - self._scheduled_for - populated
            )
            self._scheduled_for = set(owned)
            log.info(
                "lifecycle schedule: %d customers on partitions %s to schedule",
                len(pending),
                sorted(owned),
            )
        return owned

    @property
    def scheduled(self) -> bool:
        """Whether every owned customer's due time is known (none left since a rebalance)."""
        return not self._to_schedule

    async def schedule_pending(self, budget: float = SCHEDULE_SLICE) -> None:
        """The due times of the owned customers (their lifecycle stage and every rule on a fact
        that moves with time: ``SegmentCatalog.next_change``) left to compute since a
        rebalance, in slices of about ``budget`` seconds under the lock: live batches run
        between them, so a restarted worker applies new events before its whole schedule is
        known (it was one pass over every profile, under the lock, before the first batch)."""
        if not self._to_schedule or not self.ready():
            return
        profiles = self.profiles.passing()
        while self._to_schedule and self.ready():
            # Partitions that moved meanwhile start the list again (``_owned``, in the turn).
            async with self._background_turn() as settled:
                if not settled:
                    return
                catalog = self.step.catalog_for(self.model)
                pending, schedule, since = self._to_schedule, self.schedule, self._schedule_from
                deadline = time.perf_counter() + budget
                while pending:  # at least one a slice
                    customer_id = pending.pop()
                    profile = None
                    if schedule.due_of(customer_id) is None:  # else scored since, scheduled
                        profile = profiles.get(customer_id)
                    # A merged id: merged into another customer, nothing of its own comes due.
                    if profile is not None and profile.merged_into is None:
                        at = max(since, profile.last_seen_ts or 0, profile.evaluated_through)
                        schedule.set(customer_id, catalog.next_change(profile, at))
                    if time.perf_counter() >= deadline:
                        break
                if not pending:
                    log.info("lifecycle schedule: %d customers due some day", len(schedule))
            await asyncio.sleep(0)

    async def refresh_model(self) -> None:
        """Load a newer snapshot; on the very first one, score customers still unassigned."""
        version = await self.store.model_version()
        if not version or (self.model and self.model.version >= version):
            return
        data = await self.store.model()
        if data is None:
            return
        first = self.model is None
        self.model = ModelSnapshot.from_dict(data)
        self.metrics.model_version.set(self.model.version)
        log.info(
            "model version %s loaded (%s samples)", self.model.version, self.model.trained_samples
        )
        self._unassigned = self._unassigned or first

    @property
    def assigning(self) -> bool:
        """Whether customers seen before the first model are still to be assigned by it."""
        return self._unassigned and self.model is not None

    async def assign_unassigned(self, budget: float = ASSIGN_SLICE) -> None:
        """After the first model: score the customers seen before it, a chunk at a time under
        the lock (a chunk ends once its scoring has taken ``budget`` seconds, with one
        customer at least; live batches run between the chunks, ``yield_to_live``), and only
        while no partition moves (else on a later call)."""
        if not self._unassigned or self.model is None or not self.ready():
            return
        async with self.lock:
            ids = self.table.stored_ids()
        assigned, i = 0, 0

        def chunk(deadline: float) -> Iterator[str]:
            nonlocal i
            while i < len(ids):
                i += 1
                yield ids[i - 1]
                if time.perf_counter() >= deadline:
                    return

        while i < len(ids):
            async with self._background_turn() as settled:
                if not settled:
                    return
                outcome = self.step.rescore(
                    chunk(time.perf_counter() + budget),
                    self.profiles,
                    self.model,
                    self.watermark,
                    self.schedule,
                    int(time.time() * 1000),
                    only=lambda profile: profile.segment is None,
                )
                if outcome.writes:
                    await self.apply(outcome)
                    assigned += len(outcome.writes)
        self._unassigned = False
        log.info("first model: assigned %d customers seen before it", assigned)
