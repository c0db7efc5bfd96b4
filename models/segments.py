"""Segment assignment of one customer (cluster, rules, persona, lifecycle) and its changes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.clustering import ModelSnapshot
from models.facts import (
    LifecyclePolicy,
    RfmCuts,
    TimeWatch,
    checkout_judged,
    checkout_pending,
    customer_facts,
    is_dynamic_fact,
)
from models.features import CANONICAL_FEATURES, CustomerProfile, feature_vector
from models.frozen import Frozen
from models.personas import PersonaCatalog
from models.rules import RuleSegment, compile_rules
from models.session import SessionPolicy, session_record

__all__ = [
    "RuleEdits",
    "SegmentAssignment",
    "SegmentCatalog",
    "SegmentChange",
    "Stability",
    "assign",
    "changes_between",
    "exits_on_merge",
]

_RECORD_FACTS = (
    "lifecycle",
    "rfm_score",
    "value_tier",
    "customer_value_estimate",
    "region",
    "age_band",
    "top_category",
    "days_since_last_purchase",
)
#: The record's features: the canonical value features and the readable behavior, taken from
#: the facts the assignment computed (at its evaluation time) rather than computed again.
_RECORD_FEATURES = (*CANONICAL_FEATURES, *CustomerProfile("x").behavior())


@dataclass(frozen=True)
class Stability(Frozen):
    """What keeps a customer near a boundary from flapping between clusters or personas.

    ``hysteresis``: another centre (persona) must be nearer than the current one by this
    fraction of the current distance before the customer moves. ``min_dwell_ms``: event time a
    customer stays in a cluster or persona once entered, whatever their behavior does. Rule
    segments have neither: a rule is exact, and a customer who bought must leave "cart
    abandoners" at once.
    """

    hysteresis: float = 0.1
    min_dwell_ms: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError("hysteresis must be in [0, 1)")
        if self.min_dwell_ms < 0:
            raise ValueError("min_dwell_ms must not be negative")


@dataclass(frozen=True)
class SegmentCatalog(Frozen):
    """Everything besides the model that decides segments: rules, personas, lifecycle policy.

    ``watch`` (derived from the rules) holds what the rules compare facts that move with event
    time against; :meth:`next_change` is when a customer must next be evaluated with no event
    of their own.
    """

    rules: Sequence[RuleSegment] = ()
    personas: PersonaCatalog | None = None
    lifecycle: LifecyclePolicy = field(default_factory=LifecyclePolicy)
    rfm: RfmCuts = field(default_factory=RfmCuts)
    stability: Stability = field(default_factory=Stability)
    sessions: SessionPolicy = field(default_factory=SessionPolicy)
    #: The published definitions' version these rules and personas came from (0: the files of
    #: the settings; ``segmenter segments apply`` publishes numbered sets).
    version: int = 0
    watch: TimeWatch = field(init=False, repr=False, compare=False)
    #: The rules' ``evaluate_all`` as one generated function (``models.rules.compile_rules``).
    evaluate: Callable[[Mapping[str, Any]], list[str]] = field(
        init=False, repr=False, compare=False
    )

    #: The dynamic facts (``device_share.*``, ``traits.*``, ...) the rules read, the only ones
    #: ``customer_facts`` computes for them (None: all, as a rule without fields may read any).
    dynamic_facts: frozenset[str] | None = field(init=False, repr=False, compare=False)
    #: What decides segments besides the model, as 16 hex digits: the rules as written, the
    #: personas, the lifecycle, session and stability policies (not the RFM cuts, which the
    #: model brings). A profile keeps the one it was evaluated under (``evaluated_under``).
    #: None if a rule is a bare predicate (its condition unknown).
    fingerprint: str | None = field(init=False, repr=False, compare=False)
    #: Whether a rule reads ``checkout_abandoned`` (or may: a bare predicate): only then is a
    #: late visit's pending checkout judged at the next batch.
    reads_checkouts: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "evaluate", compile_rules(self.rules))
        object.__setattr__(self, "fingerprint", _fingerprint(self))
        opaque = any(rule.source is None for rule in self.rules)  # a bare predicate
        dynamic = frozenset(f for rule in self.rules for f in rule.fields if is_dynamic_fact(f))
        object.__setattr__(self, "dynamic_facts", None if opaque else dynamic)
        watch = TimeWatch.of(
            (name for rule in self.rules for name in rule.fields),
            (pair for rule in self.rules for pair in rule.thresholds),
        )
        object.__setattr__(self, "watch", watch)
        reads = opaque or any("checkout_abandoned" in rule.fields for rule in self.rules)
        object.__setattr__(self, "reads_checkouts", reads)

    def facts(
        self,
        profile: CustomerProfile,
        at: int,
        watermark: int = 0,
        only: frozenset[str] | None = None,
    ) -> dict[str, Any]:
        """``customer_facts`` under this catalog's policies, with the dynamic facts its rules
        read (``only``: just these facts, as ``customer_facts``)."""
        return customer_facts(
            profile,
            at,
            self.lifecycle,
            self.rfm,
            self.sessions,
            watermark,
            self.dynamic_facts,
            only,
        )

    def edits_since(self, before: SegmentCatalog) -> RuleEdits | None:
        """What changed from ``before`` if only rules did (added, removed, edited), so that a
        customer last evaluated under ``before`` moves only in those rules' segments; None if
        anything else that decides segments differs (the lifecycle policy, the RFM cuts, the
        session policy, stability, the personas) or an edited rule is a bare predicate.

        >>> from models.rules import RuleSegment
        >>> gold = RuleSegment.compile("vip", "value", "", {"value_tier": {"in": ["gold"]}})
        >>> top = RuleSegment.compile("vip", "value", "", {"value_tier": {"in": ["platinum"]}})
        >>> big = RuleSegment.compile("big", "value", "", {"revenue_total": {"gte": 300}})
        >>> edits = SegmentCatalog(rules=(big, top)).edits_since(SegmentCatalog(rules=(gold,)))
        >>> [r.name for r in edits.rules], sorted(edits.facts), edits.same_due
        (['big', 'vip'], ['revenue_total', 'value_tier'], True)
        >>> SegmentCatalog(rules=(gold,), stability=Stability(0.2)).edits_since(
        ...     SegmentCatalog(rules=(gold,))) is None
        True
        """
        if (
            self.lifecycle != before.lifecycle
            or self.rfm != before.rfm
            or self.sessions != before.sessions
            or self.stability != before.stability
            or not _same_personas(self.personas, before.personas)
        ):
            return None
        kept = {rule.name: rule for rule in before.rules}
        names = {rule.name for rule in self.rules}
        if [n for n in kept if n in names] != [r.name for r in self.rules if r.name in kept]:
            return None  # rules moved in the file: every customer's list is in a new order
        edited = tuple(
            rule
            for rule in self.rules
            if rule.name not in kept or not rule.same_as(kept[rule.name])
        )
        if any(rule.condition is None for rule in edited):
            return None  # a bare predicate: which facts it reads is not known
        return RuleEdits(
            rules=edited,
            evaluate=compile_rules(edited),
            names=frozenset(rule.name for rule in edited),
            removed=frozenset(kept) - names,
            facts=frozenset(name for rule in edited for name in rule.fields),
            same_due=self.watch == before.watch,
        )

    def next_change(self, profile: CustomerProfile, now: int, watermark: int = 0) -> int | None:
        """The first event time after ``now`` at which the customer's lifecycle stage or any
        rule on a fact that moves with time can change with no event of theirs (None: never).

        The end of a session still open at ``now`` and ``watermark`` is one: the ``session.*``
        facts reset then, and the record shows them.

        >>> from models.features import DAY_MS
        >>> from models.rules import RuleSegment
        >>> quiet = RuleSegment.compile("q", "lifecycle", "", {"days_since_last_seen": {"gt": 7}})
        >>> p = CustomerProfile("c", 1, first_seen_ts=0, last_seen_ts=0)
        >>> catalog = SegmentCatalog(rules=(quiet,))
        >>> due = catalog.next_change(p, 0)
        >>> catalog.lifecycle.next_change(p, 0) / DAY_MS, round(due / DAY_MS, 4)
        (30.0, 7.0005)
        """
        due = self.lifecycle.next_change(profile, now)
        end = self.sessions.ends_at(profile.session)
        if end is not None and end > now:
            if (
                end <= watermark
                and self.reads_checkouts
                and checkout_pending(profile)
                and not checkout_judged(profile)
            ):
                # A visit that arrived after its end with a checkout not (yet) paid for:
                # ``checkout_abandoned`` is judged at the next batch, its purchase given the
                # time to arrive from the other topic.
                end = watermark + 1
            if end > watermark and (due is None or end < due):
                due = end
        return self.watch.next_change(profile, now, self.rfm, due) if self.watch else due


def _fingerprint(catalog: SegmentCatalog) -> str | None:
    """:attr:`SegmentCatalog.fingerprint`.

    >>> from models.rules import RuleSegment
    >>> gold = RuleSegment.compile("vip", "value", "", {"value_tier": {"in": ["gold"]}})
    >>> a, b = SegmentCatalog(rules=(gold,)), SegmentCatalog(rules=(gold,), version=3)
    >>> a.fingerprint == b.fingerprint != SegmentCatalog().fingerprint, len(a.fingerprint)
    (True, 16)
    """
    if any(rule.condition is None for rule in catalog.rules):
        return None
    personas = catalog.personas.personas if catalog.personas is not None else ()
    spec = {
        "rules": [[r.name, r.kind, r.condition] for r in catalog.rules],
        "personas": [[p.name, dict(p.prototype), dict(p.traits)] for p in personas],
        "lifecycle": repr(catalog.lifecycle),
        "sessions": repr(catalog.sessions),
        "stability": repr(catalog.stability),
    }
    text = json.dumps(spec, sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _same_personas(a: PersonaCatalog | None, b: PersonaCatalog | None) -> bool:
    if a is None or b is None:
        return a is b
    return a is b or list(a.personas) == list(b.personas)


@dataclass(frozen=True)
class RuleEdits(Frozen):
    """A catalog's rules against an earlier catalog's (:meth:`SegmentCatalog.edits_since`).

    ``rules``: the rules added or edited, in catalog order, ``evaluate`` those alone and
    ``names`` their names;
    ``removed``: the names of rules gone; ``facts``: what the added and edited rules read;
    ``same_due``: both catalogs watch the same time thresholds, so due times stay.
    """

    rules: tuple[RuleSegment, ...]
    evaluate: Callable[[Mapping[str, Any]], list[str]]
    names: frozenset[str]
    removed: frozenset[str]
    facts: frozenset[str]
    same_due: bool

    @property
    def reads_own(self) -> bool:
        """Whether an edited rule reads the customer's cluster or persona."""
        return bool(self.facts & {"cluster", "persona"})

    def moves(self, before: Sequence[str], facts: Mapping[str, Any]) -> bool:
        """Whether a customer in rule segments ``before`` under the earlier catalog is in
        others now, from facts that hold the edited rules' own. The rules both catalogs have
        keep their order (else :meth:`SegmentCatalog.edits_since` is None), so equal
        memberships make equal lists."""
        if self.removed and not self.removed.isdisjoint(before):
            return True
        return set(self.evaluate(facts)) != self.names.intersection(before)


@dataclass(frozen=True, slots=True)
class SegmentAssignment(Frozen):
    """Where one customer stands at event time ``now``; ``segment`` is None before any model."""

    customer_id: str
    segment: int | None
    segment_label: str | None
    confidence: float | None
    model_version: int | None
    event_ts: int
    applied: int
    now: int = 0
    rule_segments: tuple[str, ...] = ()
    persona: str | None = None
    persona_confidence: float | None = None
    persona_reasons: tuple[str, ...] = ()
    lifecycle: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    definitions_version: int = 0
    definitions: str | None = None  # SegmentCatalog.fingerprint

    def members(self) -> tuple[str, ...]:
        """Every segment this customer is in, named as in ``segment-changes``.

        >>> SegmentAssignment("c", 2, None, None, 1, 0, 1, rule_segments=("vip",)).members()
        ('cluster:2', 'rule:vip')
        """
        out = [] if self.segment is None else [f"cluster:{self.segment}"]
        out += [f"rule:{name}" for name in self.rule_segments]
        if self.persona is not None:
            out.append(f"persona:{self.persona}")
        return tuple(out)

    def record(self, profile: CustomerProfile, updated_at_ms: int) -> dict[str, Any]:
        """The serving record: what `segmenter get` prints and Redis holds per customer."""
        return {
            "customer_id": self.customer_id,
            "segment": self.segment,
            "segment_label": self.segment_label,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "persona": self.persona,
            "persona_confidence": self.persona_confidence,
            "persona_reasons": list(self.persona_reasons),
            "rule_segments": list(self.rule_segments),
            "lifecycle": self.lifecycle,
            "model_version": self.model_version,
            "definitions_version": self.definitions_version,
            "event_ts": self.event_ts,
            "evaluated_at": self.now,
            "updated_at": updated_at_ms,
            "events_applied": self.applied,
            "features": {k: self.facts[k] for k in _RECORD_FEATURES},
            "facts": {k: self.facts.get(k) for k in _RECORD_FACTS},
            "traits": profile.traits,
            "session": session_record(self.facts, profile.session),
        }


@dataclass(frozen=True, slots=True)
class SegmentChange(Frozen):
    """A customer entered or exited a segment; the wire shape is DESIGN.md's `segment-changes`.

    ``segment`` is ``cluster:<id>``, ``rule:<name>`` or ``persona:<name>``. ``previous`` and
    ``current`` are the cluster ids for a cluster, the persona names for a persona, and
    membership (false / true) for a rule segment. ``change_id`` is the same every time the
    same change is computed (a redelivered batch recomputes it): an idempotency key for the
    systems that act on it.
    """

    customer_id: str
    segment: str
    change: str
    previous: Any
    current: Any
    event_ts: int
    reason: str
    model_version: int | None
    applied: int = 0
    evaluated_at: int = 0
    definitions_version: int = 0

    @property
    def change_id(self) -> str:
        """A deterministic id of this change.

        >>> SegmentChange("c", "rule:vip", "entered", False, True, 5, "r", 1, 9, 5).change_id
        '28062bd860d33bcb520b6048'
        """
        parts = [self.customer_id, self.segment, self.change, str(self.applied)]
        parts.append(str(self.evaluated_at))
        if self.definitions_version:  # a re-entry on later definitions is another change
            parts.append(f"d{self.definitions_version}")
        key = "|".join(parts)
        return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "change_id": self.change_id,
            "customer_id": self.customer_id,
            "segment": self.segment,
            "change": self.change,
            "previous": self.previous,
            "current": self.current,
            "event_ts": self.event_ts,
            "reason": self.reason,
            "model_version": self.model_version,
            "events_applied": self.applied,
            "evaluated_at": self.evaluated_at,
            "definitions_version": self.definitions_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentChange:
        return cls(
            data["customer_id"],
            data["segment"],
            data["change"],
            data.get("previous"),
            data.get("current"),
            int(data["event_ts"]),
            data.get("reason", ""),
            data.get("model_version"),
            int(data.get("events_applied", 0)),
            int(data.get("evaluated_at", 0)),
            int(data.get("definitions_version", 0)),
        )


def assign(
    profile: CustomerProfile,
    model: ModelSnapshot | None,
    catalog: SegmentCatalog | None = None,
    now: int | None = None,
    x: Mapping[str, float] | None = None,
    watermark: int = 0,
    facts: dict[str, Any] | None = None,
    points: tuple[list[float], list[float] | None] | None = None,
) -> SegmentAssignment:
    """Score a profile at event time ``now`` (default: the customer's newest event).

    ``x`` is the profile's feature vector when the caller has it already; ``watermark`` the
    newest event time the caller has applied (the ``session.*`` facts are as of it); ``facts``
    the profile's ``customer_facts`` at that time and watermark, when the caller has them;
    ``points`` ``x`` in ``model``'s clustering space and its persona space (None: not
    known), when the caller has computed them for a batch (``score_points``).

    >>> p = CustomerProfile("c", last_seen_ts=0, first_seen_ts=0)
    >>> a = assign(p, None, SegmentCatalog())
    >>> a.segment, a.lifecycle
    (None, 'new')
    """
    catalog = catalog or SegmentCatalog()
    event_ts = profile.last_seen_ts or 0
    at = max(event_ts, now or 0)
    if facts is None:
        facts = catalog.facts(profile, at, watermark)
    if x is None:
        x = feature_vector(profile)
    segment = label = confidence = version = None
    stability = catalog.stability
    point, persona_point = (None, None) if points is None else points
    if model is not None:
        if point is None:
            point = model.point(x)
        segment, distance, confidence = model.predict(x, point)
        current = profile.segment
        if current is not None and current != segment and 0 <= current < len(model.centres):
            held = at - profile.segment_since < stability.min_dwell_ms
            d_current = model.distance(x, current, point)
            if held or distance > d_current * (1.0 - stability.hysteresis):
                segment = current
                confidence = distance / (d_current + distance) if d_current + distance else 1.0
        label, version = model.describe(segment), model.version
        facts["cluster"] = segment
    persona = None
    if catalog.personas:
        held = at - profile.persona_since < stability.min_dwell_ms
        persona = catalog.personas.match(
            x, profile.persona, 1.0 if held else stability.hysteresis, model, persona_point
        )
    if persona is not None:
        facts["persona"] = persona.name
    return SegmentAssignment(
        customer_id=profile.customer_id,
        segment=segment,
        segment_label=label,
        confidence=confidence,
        model_version=version,
        event_ts=event_ts,
        applied=profile.applied,
        now=at,
        rule_segments=tuple(evaluate_rules(catalog, facts)),
        persona=persona.name if persona else None,
        persona_confidence=persona.confidence if persona else None,
        persona_reasons=persona.reasons if persona else (),
        lifecycle=facts["lifecycle"],
        facts=facts,
        definitions_version=catalog.version,
        definitions=catalog.fingerprint,
    )


#: Customers scored together from which their points are computed in one numpy pass
#: (``score_points``): below it the pass's own cost is not paid back.
BATCH_POINTS = 8


def score_points(
    model: ModelSnapshot | None, catalog: SegmentCatalog, xs: Sequence[Mapping[str, float]]
) -> list[tuple[list[float], list[float] | None]] | None:
    """Each feature dict's point in ``model``'s clustering space and in its persona space, in
    one numpy pass for them all (``assign``'s ``points``): the same floats as computed one by
    one. None with no model or fewer than ``BATCH_POINTS`` dicts."""
    if model is None or len(xs) < BATCH_POINTS:
        return None
    points, base = model.points(xs)
    personas = catalog.personas.points(model, base) if catalog.personas else None
    if personas is None:
        return [(point, None) for point in points]
    return list(zip(points, personas, strict=True))


def evaluate_rules(catalog: SegmentCatalog, facts: Mapping[str, Any]) -> list[str]:
    """The catalog's rule segments that hold on these facts, in catalog order."""
    return catalog.evaluate(facts)


def changes_between(
    before: CustomerProfile, now: SegmentAssignment, trigger: str = "event"
) -> list[SegmentChange]:
    """Every segment the customer left or joined, exits before entries, in a stable order.

    ``before`` holds what was last published (segment, rule segments, persona); ``trigger``
    says what caused the evaluation: ``event`` or ``watermark`` (time alone).

    >>> p = CustomerProfile("c", segment=1)
    >>> now = SegmentAssignment("c", 2, "x", 0.9, 7, 100, 5)
    >>> [(c.segment, c.change) for c in changes_between(p, now)]
    [('cluster:1', 'exited'), ('cluster:2', 'entered')]
    """
    out: list[SegmentChange] = []

    def emit(segment: str, change: str, previous: Any, current: Any, reason: str) -> None:
        out.append(
            SegmentChange(
                now.customer_id,
                segment,
                change,
                previous,
                current,
                now.event_ts,
                reason,
                now.model_version,
                now.applied,
                now.now,
                now.definitions_version,
            )
        )

    when = _WHEN.get(trigger, "on a new event")
    if before.segment != now.segment:
        reason = (
            "first assignment" if before.segment is None else "behavior moved nearer another centre"
        )
        if before.segment is not None:
            emit(f"cluster:{before.segment}", "exited", before.segment, now.segment, reason)
    old_rules, new_rules = set(before.rule_segments), set(now.rule_segments)
    for name in sorted(old_rules - new_rules):
        emit(f"rule:{name}", "exited", True, False, f"rule no longer holds {when}")
    if before.persona != now.persona and before.persona is not None:
        emit(
            f"persona:{before.persona}",
            "exited",
            before.persona,
            now.persona,
            "another persona is nearer",
        )
    if before.segment != now.segment and now.segment is not None:
        emit(f"cluster:{now.segment}", "entered", before.segment, now.segment, reason)
    for name in sorted(new_rules - old_rules):
        emit(f"rule:{name}", "entered", False, True, f"rule holds {when}")
    if before.persona != now.persona and now.persona is not None:
        reason = "first persona" if before.persona is None else "nearest persona changed"
        emit(f"persona:{now.persona}", "entered", before.persona, now.persona, reason)
    return out


#: What caused an evaluation (``changes_between``'s ``trigger``), in a change's reason.
_WHEN = {
    "event": "on a new event",
    "watermark": "as event time passed a threshold",
    "definitions": "under new segment definitions",
}


def exits_on_merge(profile: CustomerProfile, target_id: str, at: int) -> list[SegmentChange]:
    """Every segment a customer merged into ``target_id`` leaves (``models.identity``), in
    the order ``changes_between`` gives exits; ``at`` is the merge's event time.

    >>> p = CustomerProfile("anon", segment=2, rule_segments=["browsers"], persona="p")
    >>> [(c.segment, c.change, c.reason) for c in exits_on_merge(p, "c-1", 5)][:2]
    [('cluster:2', 'exited', 'merged into c-1'), ('rule:browsers', 'exited', 'merged into c-1')]
    """
    reason = f"merged into {target_id}"
    ts, n = profile.last_seen_ts or at, profile.applied
    out = []
    if profile.segment is not None:
        segment = f"cluster:{profile.segment}"
        out.append(
            SegmentChange(
                profile.customer_id,
                segment,
                "exited",
                profile.segment,
                None,
                ts,
                reason,
                None,
                n,
                at,
            )
        )
    for name in sorted(profile.rule_segments):
        out.append(
            SegmentChange(
                profile.customer_id, f"rule:{name}", "exited", True, False, ts, reason, None, n, at
            )
        )
    if profile.persona is not None:
        out.append(
            SegmentChange(
                profile.customer_id,
                f"persona:{profile.persona}",
                "exited",
                profile.persona,
                None,
                ts,
                reason,
                None,
                n,
                at,
            )
        )
    return out


def remember(profile: CustomerProfile, now: SegmentAssignment) -> None:
    """Record on the profile what was published, for the next comparison."""
    if now.segment != profile.segment:
        profile.segment_since = now.now
    if now.persona != profile.persona:
        profile.persona_since = now.now
    profile.segment = now.segment
    profile.rule_segments = list(now.rule_segments)
    profile.evaluated_under = now.definitions
    profile.persona = now.persona
    profile.lifecycle = now.lifecycle
    if now.facts.get("checkout_abandoned"):
        profile.abandoned_checkout_ts = profile.last_checkout_ts
