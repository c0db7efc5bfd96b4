"""The pure per-batch step: decoded messages and profiles in, every effect of the batch out.

The worker, ``segmenter eval``, the bench's core measurement and the unit tests all run this
one step. It knows no Faust, Kafka or Redis, and no partitions: a message's position is an
opaque log name and an offset, a profile comes from whatever ``ProfileSource`` the caller
gives, and the outcome lists what the caller must do, in the order that makes a crash safe
(see ``StepOutcome``).

>>> import orjson
>>> step = SegmentStep(SegmentCatalog())
>>> msg = SourceMessage("purchases", "purchases/0", 0, b"c-1", orjson.dumps(
...     {"event_id": "e1", "customer_id": "c-1", "ts": 1795000000000, "amount": 20.0}))
>>> out = step.run([msg], {}, None, 0, DueSchedule(), now_ms=0, clock=0.0)
>>> out.watermark, out.states["c-1"].orders_total, out.writes[0].record["lifecycle"]
(1795000000000, 1, 'new')
>>> again = step.run([msg], out.states, None, out.watermark, DueSchedule(), 0, 0.0)
>>> again.writes, again.states   # a redelivered message changes nothing
([], {})
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from models.clustering import ModelSnapshot, population_key
from models.events import DecodeError, DecodeLimits, Event, decode_message
from models.facts import RfmCuts, rfm_values
from models.features import CustomerProfile, feature_vector
from models.frozen import Frozen
from models.identity import (
    IDENTITY,
    IdentityMessage,
    absorb,
    decode_identity,
    events_message,
    forget_message,
    merge_message,
    redirect_of,
    state_message,
    stitch_targets,
)
from models.schedule import DueSchedule
from models.segments import (
    RuleEdits,
    SegmentCatalog,
    SegmentChange,
    assign,
    changes_between,
    evaluate_rules,
    exits_on_merge,
    remember,
    score_points,
)

#: Catalogs a step remembers by fingerprint, to re-evaluate customers last evaluated under one
#: on the rules edited since alone (``SegmentStep.reevaluate``).
_CATALOGS_KEPT = 4

__all__ = [
    "FORGET",
    "DeadLetter",
    "Intake",
    "ProfileSource",
    "RecordWrite",
    "SampleBudget",
    "SamplingPolicy",
    "SegmentStep",
    "SourceMessage",
    "StepOutcome",
]

#: The source of an erasure request (``segmenter forget``): key = customer id, no value.
FORGET = "forget"
#: Time-driven re-evaluations per step at most (``SegmentStep.max_expiries``).
MAX_EXPIRIES = 2_000
#: A batch of messages re-evaluates at most as many due customers as it has messages, and
#: this many at least (``SegmentStep.run``): a burst of due customers (visits ending
#: together) does not hold a small batch's events back (one of 101 single events took 512
#: with it, 64 ms against about 10).
MIN_EXPIRIES = 100


class RecordWrite(NamedTuple):
    """One customer's serving record, with what the store compares and counts."""

    customer_id: str
    event_ts: int
    applied: int
    segment: int | None
    record: Mapping[str, Any]
    members: Sequence[str] = ()  # every segment of any kind the customer is in


class SourceMessage(NamedTuple):
    """One input message as read: its source kind, the log it came from and its offset there.

    ``source`` is ``clickstream``, ``purchases``, ``identify``, ``forget`` or ``identity``
    (``models.identity``). ``log`` names
    the ordered log the message sits in (the shell uses ``topic/partition``); a customer's
    messages stay in one log, which is what makes the redelivery guard exact.
    """

    source: str
    log: str
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter(Frozen):
    """A message that could not be applied, and why (the reason may quote the message)."""

    message: SourceMessage
    reason: str


class ProfileSource(Protocol):
    """Where the step finds the stored profile of a customer (None: never seen, or erased)."""

    def get(self, customer_id: str) -> CustomerProfile | None: ...


@dataclass(frozen=True, slots=True)
class SamplingPolicy(Frozen):
    """Which profile updates become training samples for the one trainer.

    A customer is sampled when their events applied cross a multiple of ``every`` and they have
    at least ``min_events`` and ``min_sessions``; ``max_per_second`` caps the samples of one
    step instance (0: no cap), so the single trainer learns from a thinned stream however many
    workers feed it. ``min_sessions`` keeps customers seen on too few visits out of the model
    (they are still scored): their vectors are one visit's noise, and on overlapping traffic
    they drew centres away from the customers with evidence. Sessions are counted by
    ``session_id``; a customer with none (a feed without session ids) is not held back.
    """

    every: int = 5
    min_events: int = 3
    max_per_second: float = 400.0
    min_sessions: int = 1


class SampleBudget:
    """A token bucket of ``rate`` tokens a second, one second's worth of burst.

    The clock is an argument, so a replay can run on the clock it simulates.

    >>> b = SampleBudget(2)
    >>> [b.take(0.0), b.take(0.0), b.take(0.0), b.take(0.5), b.take(0.5)]
    [True, True, False, True, False]
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at: float | None = None

    def take(self, clock: float) -> bool:
        if self.rate <= 0:
            return True
        if self._at is not None:
            self._tokens = min(self.rate, self._tokens + max(0.0, clock - self._at) * self.rate)
        self._at = clock
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass
class StepOutcome:
    """Everything one step causes. The shell applies it in this order, which is crash-safe:

    1. ``erased`` from the store (an erasure is older than any write of the same step), then
       ``aliases``: each merged id's record removed and its alias set (``models.identity``);
    2. ``writes`` to the store, with ``counters``;
    3. a tombstone per ``erased`` customer, then ``changes``, ``samples``, ``dead`` and
       ``forwards`` to their topics;
    4. ``states`` to the changelog (None: delete), and only then acknowledge the messages.

    A crash before 4 redelivers the messages and every effect is redone idempotently; a crash
    after it finds the messages' positions in the profiles, and nothing is applied twice.
    ``due`` holds the next due time of every customer scored (None: none): the earliest of
    their lifecycle stage's next change, every rule's next threshold crossing on a fact that
    moves with time and the end of their session (``SegmentCatalog.next_change``).
    """

    watermark: int
    writes: list[RecordWrite] = field(default_factory=list)
    changes: list[SegmentChange] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, CustomerProfile | None] = field(default_factory=dict)
    due: dict[str, int | None] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)
    #: Identity messages (key, value) for the identity topic: merge requests, states, events
    #: forwarded to the customer an id was merged into.
    forwards: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: Merged id to the customer it now belongs to: the store drops the merged id's record and
    #: answers a read of it with that customer's.
    aliases: dict[str, str] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # events decoded, per source
    counters: dict[str, int] = field(default_factory=dict)

    def only(self, customer_ids: Collection[str]) -> StepOutcome:
        """A re-evaluation's outcome (``SegmentStep.reevaluate``: writes, changes, states and
        due times) kept to these customers, its ``records`` counter recounted.

        >>> out = StepOutcome(0, due={"a": 1, "b": 2}, counters={"records": 0})
        >>> kept = out.only({"b"})
        >>> kept.due, kept.counters
        ({'b': 2}, {})
        """
        keep = customer_ids
        writes = [w for w in self.writes if w.customer_id in keep]
        return StepOutcome(
            self.watermark,
            writes=writes,
            changes=[c for c in self.changes if c.customer_id in keep],
            states={c: p for c, p in self.states.items() if c in keep},
            due={c: d for c, d in self.due.items() if c in keep},
            counters={"records": len(writes)} if writes else {},
        )


class Intake:
    """A message's events, or its dead letter: decoding, then the check on event times ahead
    of the wall clock.

    ``decode(source, value, key)`` is the core's ``decode_message`` unless the shell gives a
    faster one with the same contract (the worker does: stream/worker/decoding.py). A message
    with an event dated later than ``now_ms`` plus ``max_future_ms`` is a dead letter (0: no
    check): one event from a device with a wrong clock would otherwise move the watermark ahead
    and expire every customer's lifecycle stage.
    """

    def __init__(
        self,
        limits: DecodeLimits = DecodeLimits(),  # noqa: B008 - frozen
        loads: Callable[[bytes], Any] = json.loads,
        decode: Callable[[str, bytes, bytes | None], list[Event]] | None = None,
        max_future_ms: int = 0,
    ) -> None:
        self.limits = limits
        self.loads = loads
        self.decode = decode or self._decode_message
        self.max_future_ms = max_future_ms

    def events(self, message: SourceMessage, now_ms: int, out: StepOutcome) -> list[Event] | None:
        """The message's events, or None with a dead letter in ``out``."""
        try:
            if not message.key:
                raise DecodeError("message has no key; the key must be the customer_id")
            events = self.decode(message.source, message.value or b"", message.key)
        except DecodeError as exc:
            out.dead.append(DeadLetter(message, exc.reason))
            return None
        except Exception as exc:  # a decoder bug must not make a poison message
            out.dead.append(
                DeadLetter(message, f"could not decode ({type(exc).__name__}: {str(exc)[:120]})")
            )
            return None
        if self.max_future_ms > 0 and now_ms > 0:
            latest = now_ms + self.max_future_ms
            for event in events:
                if event.ts > latest:
                    out.dead.append(DeadLetter(message, self._ahead(event, now_ms)))
                    return None
        return events

    def _ahead(self, event: Event, now_ms: int) -> str:
        dated = datetime.fromtimestamp(event.ts / 1000, UTC)
        return (
            f"event {event.event_id!r} is dated {dated.isoformat(timespec='seconds')}, "
            f"{(event.ts - now_ms) / 1000:,.0f} s ahead of the worker's clock (allowed "
            f"skew {self.max_future_ms / 1000:,.0f} s)"
        )

    def _decode_message(self, source: str, value: bytes, key: bytes | None) -> list[Event]:
        return decode_message(source, value, key, self.limits, self.loads)


class SegmentStep:
    """The segmenter's per-batch logic.

    ``run`` applies a batch of messages: decoding (bad messages become dead letters),
    erasures, features, one scoring per touched customer, changes, records, samples, then
    lifecycle expiry of every customer the moved watermark made due. ``rescore`` scores stored
    customers outside their events (a first model).
    """

    def __init__(
        self,
        catalog: SegmentCatalog,
        sampling: SamplingPolicy = SamplingPolicy(),  # noqa: B008 - frozen
        limits: DecodeLimits = DecodeLimits(),  # noqa: B008 - frozen
        worker_id: str = "",
        loads: Callable[[bytes], Any] = json.loads,
        decode: Callable[[str, bytes, bytes | None], list[Event]] | None = None,
        max_future_ms: int = 0,
    ) -> None:
        self.catalog = catalog
        self.sampling = sampling
        self.worker_id = worker_id
        self.intake = Intake(limits, loads, decode, max_future_ms)
        self.identity = _Stitching(self)
        #: Customers a step re-evaluates for time at most; the rest of those due wait for
        #: the next step (after a restart every customer can be due at once: a million of them
        #: in one step held the worker for minutes and gigabytes).
        self.max_expiries = MAX_EXPIRIES
        self._budget = SampleBudget(sampling.max_per_second)
        self._rfm_of: tuple[int, SegmentCatalog] | None = None
        #: The catalogs scored with, newest last, by fingerprint (``reevaluate``).
        self._used: dict[str, SegmentCatalog] = {}
        self._remember_catalog(catalog)

    def use_catalog(self, catalog: SegmentCatalog) -> None:
        """Score with these definitions from now on (new published definitions)."""
        self.catalog = catalog
        self._rfm_of = None
        self._remember_catalog(catalog)

    def _remember_catalog(self, catalog: SegmentCatalog) -> None:
        if catalog.fingerprint is None:
            return
        self._used.pop(catalog.fingerprint, None)
        self._used[catalog.fingerprint] = catalog
        while len(self._used) > _CATALOGS_KEPT:
            del self._used[next(iter(self._used))]

    def catalog_for(self, model: ModelSnapshot | None) -> SegmentCatalog:
        """The catalog with the population RFM cuts the model carries, if any."""
        if model is None or not model.rfm_cuts:
            return self.catalog
        if self._rfm_of is None or self._rfm_of[0] != model.version:
            cuts = RfmCuts.from_dict(model.rfm_cuts)
            self._rfm_of = (model.version, replace(self.catalog, rfm=cuts))
        return self._rfm_of[1]

    # -- a batch ------------------------------------------------------------------------------

    def run(
        self,
        messages: Sequence[SourceMessage],
        profiles: ProfileSource | Mapping[str, CustomerProfile | None],
        model: ModelSnapshot | None,
        watermark: int,
        schedule: DueSchedule,
        now_ms: int,
        clock: float,
        expiries: int | None = None,
    ) -> StepOutcome:
        """Apply one batch; ``watermark`` is the newest event time applied before it,
        ``now_ms`` the wall clock for ``updated_at`` and the future check (0: no wall clock, as
        in a replay: no check), ``clock`` seconds for the sampling cap.

        Customers due by the new watermark are re-evaluated after the batch's own: at most
        ``expiries``, by default as many as the batch has messages (``MIN_EXPIRIES`` at
        least; an empty step: ``max_expiries``), never more than ``max_expiries``. The rest
        stay due for the next step.

        Messages are applied in the order given. An erasure drops the customer's profile at its
        place in that order: their events before it are erased with them, events after it start
        a new profile. A message with an event dated too far after ``now_ms`` is a dead
        letter, whole (``Intake``).
        """
        out = StepOutcome(watermark=watermark)
        touched: dict[str, tuple[CustomerProfile, int]] = {}  # profile, events applied before
        dirty: set[str] = set()  # to save though no event was applied (identity, forwarding)
        self.identity.begin()
        for message in messages:
            if message.source == FORGET:
                if message.key:
                    customer_id = message.key.decode("utf-8", "replace")
                    _erase(customer_id, touched, profiles, out, schedule)
                continue
            if message.source == IDENTITY:
                self.identity.handle(message, touched, dirty, profiles, out, schedule, now_ms)
                continue
            events = self.intake.events(message, now_ms, out)
            if events is None:
                continue
            customer_id = events[0].customer_id
            out.events[message.source] = out.events.get(message.source, 0) + len(events)
            profile = _touch(customer_id, touched, profiles, out)
            if profile.seen_position(message.log, message.offset):
                continue
            if profile.merged_into is not None:  # merged: the events belong to another
                out.forwards.append(
                    events_message(
                        customer_id,
                        profile.merged_into,
                        message.source,
                        message.key,
                        message.value,
                    )
                )
                dirty.add(customer_id)
                continue
            self.identity.apply(profile, events, dirty, out)

        catalog = self.catalog_for(model)
        scored = []
        for customer_id, (profile, before) in touched.items():
            if profile.applied == before or profile.merged_into is not None:
                if customer_id in dirty:
                    out.states[customer_id] = profile
                continue  # every message was a redelivery or every event a duplicate
            scored.append((profile, before))
            out.states[customer_id] = profile  # in the order touched, as the dirty ones
        xs = [feature_vector(profile) for profile, _ in scored]
        points = score_points(model, catalog, xs)
        for i, (profile, before) in enumerate(scored):
            # A customer evaluated as of a later time than this worker has applied (by the
            # worker that owned their partition before) moves its event time on to it.
            out.watermark = max(out.watermark, profile.last_seen_ts or 0, profile.evaluated_through)
            x = xs[i]
            _score(
                profile,
                model,
                catalog,
                now_ms,
                None,
                "event",
                out,
                schedule,
                self.worker_id,
                x=x,
                points=None if points is None else points[i],
            )
            if self._has_evidence(profile) and self._wants_sample(before, profile.applied, clock):
                out.samples.append(_sample(profile, x))

        n_records = len(out.writes)
        if out.watermark > watermark or schedule.has_due(out.watermark):
            if expiries is None:
                expiries = max(MIN_EXPIRIES, len(messages)) if messages else self.max_expiries
            limit = min(expiries, self.max_expiries)
            self._expire(profiles, model, catalog, now_ms, out, schedule, limit)
        counters = {
            "events": sum(out.events.values()),
            "messages": len(messages),
            "dead_letters": len(out.dead),
            "records": len(out.writes),
            "expired": len(out.writes) - n_records,
            "forgotten": len(out.erased),
            "merged": len(out.aliases),
            "forwarded": out.counters.get("forwarded", 0),
        }
        out.counters = {name: n for name, n in counters.items() if n}
        return out

    def rescore(
        self,
        customer_ids: Iterable[str],
        profiles: ProfileSource | Mapping[str, CustomerProfile | None],
        model: ModelSnapshot | None,
        watermark: int,
        schedule: DueSchedule,
        now_ms: int,
        only: Callable[[CustomerProfile], bool] | None = None,
        rewrite: bool = False,
        trigger: str = "watermark",
    ) -> StepOutcome:
        """Score stored customers at the watermark (``_as_of``) outside their events, as if on
        an event (a first model assigns everyone seen before it); ``only`` picks which.

        ``rewrite``: the serving store lost the records (``stream.worker.rebuild``). Every
        customer's record is written again, evaluated at the watermark as at a due time; a
        customer's state is saved (and their changes published) only if that evaluation moved
        a segment or their lifecycle stage, which a newer model than the one that last scored
        them can do. Anyone else is only rewritten: no change, no state, so the outcome's
        effects are the store writes alone (the time they were evaluated as of moves on in the
        record, not in the saved state: saving it would write the whole table to the
        changelog in every rebuild). ``trigger`` names the cause in the changes'
        reasons: ``watermark``, or ``definitions`` for a backfill under new definitions.

        >>> import orjson
        >>> step = SegmentStep(SegmentCatalog())
        >>> msg = SourceMessage("purchases", "purchases/0", 0, b"c-1", orjson.dumps(
        ...     {"event_id": "e1", "customer_id": "c-1", "ts": 1795000000000, "amount": 20.0}))
        >>> out = step.run([msg], {}, None, 0, DueSchedule(), now_ms=0, clock=0.0)
        >>> again = step.rescore(["c-1", "c-2"], out.states, None, out.watermark, DueSchedule(),
        ...                      0, rewrite=True)
        >>> [w.customer_id for w in again.writes], again.states, again.changes, again.counters
        (['c-1'], {}, [], {'rebuilt': 1})
        """
        out = StepOutcome(watermark=watermark)
        catalog = self.catalog_for(model)
        for customer_id in customer_ids:
            profile = profiles.get(customer_id)
            if profile is None or profile.merged_into is not None:
                continue  # a merged id has no record: its alias is its customer's to write
            if only is not None and not only(profile):
                continue
            if rewrite:
                for merged_id in profile.merged_ids:
                    out.aliases[merged_id] = customer_id
            else:
                _score(
                    profile,
                    model,
                    catalog,
                    now_ms,
                    watermark,
                    "event",
                    out,
                    schedule,
                    self.worker_id,
                )
                out.states[customer_id] = profile
                continue
            if _score(
                profile, model, catalog, now_ms, watermark, trigger, out, schedule, self.worker_id
            ):
                out.states[customer_id] = profile
        if out.writes:
            out.counters = {"rebuilt" if rewrite else "records": len(out.writes)}
        return out

    def reevaluate(
        self,
        customer_ids: Iterable[str],
        profiles: ProfileSource | Mapping[str, CustomerProfile | None],
        model: ModelSnapshot | None,
        watermark: int,
        schedule: DueSchedule,
        now_ms: int,
    ) -> StepOutcome:
        """Stored customers under new definitions (a backfill, ``stream.worker.definitions``):
        what the definitions decide, evaluated at the watermark (``_as_of``).

        A customer last evaluated under definitions this step scored with (the profile's
        ``evaluated_under``, one of the last few catalogs), when only rules changed since
        (``SegmentCatalog.edits_since``) and the customer is not due yet (``schedule``: no
        time threshold crossed since), can move only in the rules added, edited and removed:
        only the facts those rules read are computed and only they are evaluated; the other
        memberships stay as that evaluation left them. Anyone else goes the full way: their
        rule segments, lifecycle stage and persona are evaluated first (their facts, the rules
        and the personas alone); their cluster is the model's and stays.

        A customer whom that moves is scored in full (``trigger``
        ``definitions``: the record written under the new version, their changes, their
        state). Anyone else keeps their record and state: only their due time is set again,
        for the new rules' thresholds. So a backfill writes what it changes, and a customer it
        does not move keeps the record (and version) an earlier evaluation wrote.

        >>> import orjson
        >>> from models.rules import RuleSegment
        >>> step = SegmentStep(SegmentCatalog())
        >>> msg = SourceMessage("purchases", "purchases/0", 0, b"c-1", orjson.dumps(
        ...     {"event_id": "e1", "customer_id": "c-1", "ts": 1795000000000, "amount": 20.0}))
        >>> out = step.run([msg], {}, None, 0, DueSchedule(), now_ms=0, clock=0.0)
        >>> again = step.reevaluate(["c-1"], out.states, None, out.watermark, DueSchedule(), 0)
        >>> again.writes, again.states, list(again.due)
        ([], {}, ['c-1'])
        >>> buyer = RuleSegment.compile("buyer", "value", "", {"orders_total": {"gte": 1}})
        >>> step.use_catalog(SegmentCatalog(rules=(buyer,), version=2))
        >>> moved = step.reevaluate(["c-1"], out.states, None, out.watermark, DueSchedule(), 0)
        >>> [(c.segment, c.change) for c in moved.changes], moved.writes[0].record["rule_segments"]
        ([('rule:buyer', 'entered')], ['buyer'])
        """
        out = StepOutcome(watermark=watermark)
        catalog = self.catalog_for(model)
        personas = catalog.personas
        stability = catalog.stability
        since: dict[str | None, RuleEdits | None] = {None: None}  # by earlier fingerprint
        for customer_id in customer_ids:
            profile = profiles.get(customer_id)
            if profile is None or profile.merged_into is not None:
                continue  # a merged id has no record: its customer's is the one
            as_of = _as_of(profile, watermark)
            at = max(profile.last_seen_ts or 0, as_of)
            under = profile.evaluated_under
            if under not in since:
                before = self._used.get(under)  # type: ignore[arg-type]
                since[under] = None if before is None else self.catalog.edits_since(before)
            edits = since[under]
            due = schedule.due_of(customer_id) if edits is not None else None
            if edits is not None and (due is None or due > at):
                if not edits.rules and not edits.removed:
                    out.due[customer_id] = due  # nothing edited: nothing moves
                    continue
                facts = catalog.facts(profile, at, as_of, edits.facts)
                if edits.reads_own:
                    _add_own(facts, profile)
                if not edits.moves(profile.rule_segments, facts):
                    if not edits.same_due:
                        due = catalog.next_change(profile, at, as_of)
                        schedule.set(customer_id, due)
                    out.due[customer_id] = due
                else:
                    _score(
                        profile,
                        model,
                        catalog,
                        now_ms,
                        watermark,
                        "definitions",
                        out,
                        schedule,
                        self.worker_id,
                        due=(due,) if edits.same_due else None,
                    )
                    out.states[customer_id] = profile
                continue
            facts = catalog.facts(profile, at, as_of)
            moved = facts["lifecycle"] != profile.lifecycle
            if personas is not None and not moved:
                held = at - profile.persona_since < stability.min_dwell_ms  # as ``assign``
                found = personas.match(
                    feature_vector(profile),
                    profile.persona,
                    1.0 if held else stability.hysteresis,
                    model,
                )
                moved = found.name != profile.persona
            if not moved:
                _add_own(facts, profile)
                moved = evaluate_rules(catalog, facts) != profile.rule_segments
                facts.pop("cluster", None)
                facts.pop("persona", None)
            if moved:
                _score(
                    profile,
                    model,
                    catalog,
                    now_ms,
                    watermark,
                    "definitions",
                    out,
                    schedule,
                    self.worker_id,
                    facts,
                )
                out.states[customer_id] = profile
            else:
                due = catalog.next_change(profile, at, as_of)
                out.due[customer_id] = due
                schedule.set(customer_id, due)
        if out.writes:
            out.counters = {"records": len(out.writes)}
        return out

    # -- the parts ----------------------------------------------------------------------------

    def _expire(
        self,
        profiles: ProfileSource | Mapping[str, CustomerProfile | None],
        model: ModelSnapshot | None,
        catalog: SegmentCatalog,
        now_ms: int,
        out: StepOutcome,
        schedule: DueSchedule,
        limit: int,
    ) -> None:
        """Re-evaluate, at the watermark (``_as_of``), at most ``limit`` customers that came due
        as it moved: their lifecycle stage or a rule on a fact that moves with time
        (``days_since_*``, decayed values, RFM) can have changed, or their session ended
        (``session.*``). Each gets its record written, its next due time and its state saved:
        the state holds the time it was evaluated as of (``evaluated_through``), which moves
        on here even when no segment does (a visit's end changes the record's ``session``),
        and a worker that takes the customer over must not evaluate them as of an earlier
        time (``_as_of``).

        Event time only: with no new events the watermark stands still and nothing expires, so
        a replay of a log ends in the same segments as the live stream did.
        """
        for customer_id in schedule.pop_due(out.watermark, limit):
            profile = out.states.get(customer_id) or profiles.get(customer_id)
            if profile is None or profile.merged_into is not None:
                continue
            _score(
                profile,
                model,
                catalog,
                now_ms,
                out.watermark,
                "watermark",
                out,
                schedule,
                self.worker_id,
            )
            out.states[customer_id] = profile

    def _has_evidence(self, profile: CustomerProfile) -> bool:
        """Seen on ``min_sessions`` sessions, or on none: sessions are counted by
        ``session_id``, and a feed without them (a purchase log) has nothing to count."""
        sessions = profile.sessions
        return sessions == 0 or sessions >= self.sampling.min_sessions

    def _wants_sample(self, before: int, after: int, clock: float) -> bool:
        every = self.sampling.every
        due = after >= self.sampling.min_events and after // every > before // every
        return due and self._budget.take(clock)


class _Stitching:
    """The step's identity stitching (``models.identity``): signals in events, and the
    identity topic's messages (merge requests, states, forwarded events, erasures)."""

    def __init__(self, step: SegmentStep) -> None:
        self.step = step
        #: Ids cut (merged away) in the batch being run: not saved yet, so not sent yet.
        self._cut: set[str] = set()

    def begin(self) -> None:
        """A new batch."""
        self._cut.clear()

    def apply(
        self, profile: CustomerProfile, events: Sequence[Event], dirty: set[str], out: StepOutcome
    ) -> None:
        """Fold events into a profile; an event naming a second id (``anonymous_id``,
        ``previous_id``) asks for that id to be merged into this customer."""
        for event in events:
            profile.apply(event, self.step.catalog.sessions.timeout_ms)
            if event.anonymous_id is not None or event.previous_id is not None:
                others = (event.anonymous_id, event.previous_id)
                for other in stitch_targets(profile, others):
                    out.forwards.append(merge_message(other, profile.customer_id, event.ts))
                    dirty.add(profile.customer_id)

    def handle(
        self,
        message: SourceMessage,
        touched: dict[str, tuple[CustomerProfile, int]],
        dirty: set[str],
        profiles: ProfileSource | Mapping[str, CustomerProfile | None],
        out: StepOutcome,
        schedule: DueSchedule,
        now_ms: int,
    ) -> None:
        """One identity-topic message (``models.identity``), applied to the id it is
        addressed to: a merge request to the merged id, a state or events to the customer."""
        try:
            msg = decode_identity(message.value, message.key, self.step.intake.loads)
            other = _state_profile(msg)
        except DecodeError as exc:
            out.dead.append(DeadLetter(message, exc.reason))
            return
        addressed = msg.target_id if msg.op in ("state", "events") else msg.source_id
        profile = _touch(addressed, touched, profiles, out)
        if profile.seen_position(message.log, message.offset):
            return
        dirty.add(addressed)
        if msg.op == "forget":  # erased with the customer it was merged into
            _erase(addressed, touched, profiles, out, schedule)
        elif msg.op == "merge":
            self._merge_away(profile, msg, message, touched, out, schedule)
        elif profile.merged_into is not None:  # merged on since: pass it along
            forward = (
                state_message(msg.source_id, profile.merged_into, msg.ts, msg.state)
                if msg.op == "state"
                else events_message(
                    msg.source_id, profile.merged_into, msg.source or "", msg.key, msg.value
                )
            )
            out.forwards.append(forward)
        elif msg.op == "state":
            if msg.source_id not in profile.merged_ids:
                absorb(
                    profile,
                    other or CustomerProfile(msg.source_id),
                    self.step.catalog.sessions.timeout_ms,
                )
            merged = [msg.source_id, *(other.merged_ids if other else ())]
            for merged_id in merged:  # again on a repeat: the newest alias is the end of a chain
                out.aliases[merged_id] = addressed
        else:
            inner = SourceMessage(msg.source or "", message.log, message.offset, msg.key, msg.value)
            events = self.step.intake.events(inner, now_ms, out)
            if events:
                moved = [e._replace(customer_id=addressed) for e in events]
                self.apply(profile, moved, dirty, out)
                out.counters["forwarded"] = out.counters.get("forwarded", 0) + len(moved)

    def _merge_away(
        self,
        profile: CustomerProfile,
        msg: IdentityMessage,
        message: SourceMessage,
        touched: dict[str, tuple[CustomerProfile, int]],
        out: StepOutcome,
        schedule: DueSchedule,
    ) -> None:
        """Merge this id into ``msg.target_id``, in two steps (``models.identity``).

        The cut: the id's exits, its history kept as it is with ``merged_into`` set (its
        later events are forwarded from now on), and the request sent again to itself. Once
        the cut is saved, that copy (or any repeat of the request) sends the history the cut
        holds and leaves a bare redirect. The history sent is always a saved one: had it
        been sent at the cut, a crash before the save would redo the cut after a restart, and
        the id's messages, read again in another interleaving, could put events in it that
        the first history sent lacked (the customer keeps the first one).
        """
        target, customer_id = msg.target_id, profile.customer_id
        if profile.merged_into is not None:
            if profile.merged_into != target:
                out.dead.append(
                    DeadLetter(
                        message,
                        f"{customer_id!r} is already merged into "
                        f"{profile.merged_into!r}; an id joins the first customer that claims it",
                    )
                )
            elif customer_id not in self._cut:  # the cut is saved: send what it holds
                seen = profile.applied > 0 or bool(profile.merged_ids)
                state = {**profile.to_state(), "into": None} if seen else None
                out.forwards.append(state_message(customer_id, target, msg.ts, state))
                redirect = redirect_of(profile, target)
                touched[customer_id] = (redirect, redirect.applied)
            return
        if target in profile.merged_ids:
            out.dead.append(
                DeadLetter(
                    message,
                    f"merging {customer_id!r} into {target!r} would make a cycle "
                    f"({target!r} was merged into {customer_id!r})",
                )
            )
            return
        out.changes.extend(exits_on_merge(profile, target, msg.ts))
        profile.merged_into = target
        self._cut.add(customer_id)
        out.forwards.append(merge_message(customer_id, target, msg.ts))
        out.due[customer_id] = None
        schedule.set(customer_id, None)


def _touch(
    customer_id: str,
    touched: dict[str, tuple[CustomerProfile, int]],
    profiles: ProfileSource | Mapping[str, CustomerProfile | None],
    out: StepOutcome,
) -> CustomerProfile:
    """The customer's profile for this batch: the one already touched, the stored one (unless
    erased earlier in the batch), or a new one."""
    found = touched.get(customer_id)
    if found is None:
        stored = None if customer_id in out.states else profiles.get(customer_id)
        profile = stored if stored is not None else CustomerProfile(customer_id)
        found = touched[customer_id] = (profile, profile.applied)
    return found[0]


def _state_profile(msg: IdentityMessage) -> CustomerProfile | None:
    """The profile a state message carries (None: none, or not a state message)."""
    if msg.state is None:
        return None
    try:
        profile = CustomerProfile.from_state(msg.state)
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"identity state is not a profile state ({str(exc)[:80]})") from None
    if profile.customer_id != msg.source_id:
        raise DecodeError(f"identity state is {profile.customer_id[:64]!r}'s, not the 'from' id")
    return profile


def _erase(
    customer_id: str,
    touched: dict[str, tuple[CustomerProfile, int]],
    profiles: ProfileSource | Mapping[str, CustomerProfile | None],
    out: StepOutcome,
    schedule: DueSchedule,
) -> None:
    """Erase a customer at this point of the batch; the ids merged into them are erased too
    (an erasure request to each through the identity topic: they may be on other workers)."""
    found = touched.pop(customer_id, None)
    profile = (
        found[0] if found else None if customer_id in out.states else profiles.get(customer_id)
    )
    for merged_id in profile.merged_ids if profile is not None else ():
        out.forwards.append(forget_message(merged_id, customer_id))
    out.states[customer_id] = None
    out.due[customer_id] = None
    schedule.set(customer_id, None)
    if customer_id not in out.erased:
        out.erased.append(customer_id)


def _add_own(facts: dict[str, Any], profile: CustomerProfile) -> None:
    """The customer's published cluster and persona as the ``cluster`` and ``persona`` facts
    (as ``assign`` adds them), for rules re-evaluated without a new assignment."""
    if profile.segment is not None:
        facts["cluster"] = profile.segment
    if profile.persona is not None:
        facts["persona"] = profile.persona


def _score(
    profile: CustomerProfile,
    model: ModelSnapshot | None,
    catalog: SegmentCatalog,
    now_ms: int,
    at: int | None,
    trigger: str,
    out: StepOutcome,
    schedule: DueSchedule,
    worker_id: str,
    facts: dict[str, Any] | None = None,
    due: tuple[int | None] | None = None,
    x: dict[str, float] | None = None,
    points: tuple[list[float], list[float] | None] | None = None,
) -> bool:
    """Assign, collect changes and the record write; True if what the profile remembers
    of its segments (published segments, lifecycle stage) changed. ``due``: the customer's
    next due time, if known (the time thresholds are as when it was computed).

    The evaluation is as of the watermark, or of the time the customer was last evaluated
    as of if that is later (``_as_of``).

    Every evaluation writes the record, a time-driven one (``trigger`` watermark) too: it
    is due because something the record shows changes then (a rule or the lifecycle stage,
    and with them ``evaluated_at``, ``days_since_*`` and the decayed values), and due
    times come only at threshold crossings (``SegmentCatalog.next_change``), a finite
    number between two events of the customer, never every batch.
    """
    watermark = _as_of(profile, out.watermark)
    if at is not None and at < watermark:
        at = watermark
    assignment = assign(
        profile, model, catalog, at, x=x, watermark=watermark, facts=facts, points=points
    )
    found = changes_between(profile, assignment, trigger)
    out.changes.extend(found)
    moved = bool(found) or assignment.lifecycle != profile.lifecycle
    remember(profile, assignment)
    profile.evaluated_through = watermark
    next_due = catalog.next_change(profile, assignment.now, watermark) if due is None else due[0]
    out.due[profile.customer_id] = next_due
    schedule.set(profile.customer_id, next_due)
    record = assignment.record(profile, now_ms)
    record["worker_id"] = worker_id
    out.writes.append(
        RecordWrite(
            profile.customer_id,
            assignment.event_ts,
            assignment.applied,
            assignment.segment,
            record,
            assignment.members(),
        )
    )
    return moved


def _as_of(profile: CustomerProfile, watermark: int) -> int:
    """The event time to evaluate a customer as of: the watermark, or the time of their last
    evaluation if that is later. A worker's watermark is the newest event time it applied;
    one that took the customer's partition over (or restarted) can be behind the worker
    that evaluated them last, and an evaluation as of its watermark would take back what
    time had moved (a session's end, a lifecycle stage) in a record whose events are the
    same, which the store accepts as equal.

    >>> p = CustomerProfile("c", evaluated_through=50)
    >>> _as_of(p, 20), _as_of(p, 80)
    (50, 80)
    """
    through = profile.evaluated_through
    return watermark if watermark >= through else through


def _sample(profile: CustomerProfile, x: dict[str, float] | None = None) -> dict[str, Any]:
    """A training sample: the feature vector (``x``, when the caller has it) and, for a
    buyer, raw RFM for the quantiles."""
    at = profile.last_seen_ts or 0
    rfm = rfm_values(profile, at) if profile.orders_total else None
    key = population_key(profile.customer_id)  # the trainer counts each customer once
    if x is None:
        x = feature_vector(profile)
    return {"x": x, "rfm": rfm, "ts": profile.last_seen_ts, "key": key}
