"""The customer view and the segment view: why a customer is in each of their segments, and
what a segment is doing. The read API serves them (``GET /api/customers/{id}``,
``GET /api/segments/{segment}``) and the dashboard shows them.

Everything comes from what the worker already keeps in Redis: the customer's record (segments,
the persona's reasons, the facts and features a rule reads), their recent changes and a
segment's examples (``stream.store.views``), the size snapshots per event-time bucket (sizes,
entry and exit totals), the model; and from the definitions this server loaded
(``stream.serving.definitions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from models.clustering import ModelSnapshot
from stream.serving.definitions import Definitions

__all__ = [
    "CustomerView",
    "SegmentView",
    "customer_view",
    "fact_value",
    "Resolved",
    "resolve_segment",
    "segment_view",
]


class FactValue(BaseModel):
    fact: str
    value: Any = Field(None, description="the value the record holds (as of evaluated_at)")
    stored: bool = Field(description="false: the record does not carry this fact")
    where: str | None = Field(None, description="features, facts, traits or the record itself")


class Membership(BaseModel):
    segment: str = Field(description="cluster:<id>, persona:<name> or rule:<name>")
    kind: str = Field(description="cluster, persona, or the rule segment's kind")
    description: str
    confidence: float | None = None
    reasons: list[str] = Field(default_factory=list, description="the persona's reasons")
    definition: str = Field("", description="the rule or persona as written in its file")
    version: str | None = Field(None, description="definitions file hash, or the model version")
    facts: list[FactValue] = Field(default_factory=list, description="the facts a rule reads")


class Change(BaseModel):
    at: int = Field(description="event time the change was evaluated at (epoch ms)")
    events_applied: int
    segment: str
    change: Literal["entered", "exited"]
    change_id: str = Field(description="the change_id of the same change on segment-changes")


class CustomerView(BaseModel):
    customer_id: str
    merged_ids: list[str] = Field(description="ids merged into this customer (identity)")
    merged_into: str | None = Field(None, description="set when this id was merged into another")
    note: str = ""
    segments: list[Membership]
    changes: list[Change] = Field(description="recent segment changes, newest first")
    record: dict[str, Any] = Field(description="the record, as GET /customers/{id}")


class Bucket(BaseModel):
    bucket: int = Field(description="event-time bucket start (epoch ms)")
    size: int = Field(description="customers in the segment at the bucket's last snapshot")
    entered: int | None = Field(None, description="entries since the previous bucket")
    exited: int | None = Field(None, description="exits (erasures included) since then")


class SegmentView(BaseModel):
    segment: str
    kind: str
    description: str
    customers: int
    share: float = Field(description="share of all customers with a record")
    definition: str = Field(description="as written (a rule or persona), or the cluster centre")
    facts: list[str] = Field(description="the facts a rule reads")
    version: str | None = Field(description="definitions file hash, or the model version")
    history: list[Bucket] = Field(description="size, entries and exits per bucket, oldest first")
    examples: list[str] = Field(description="a few customers in the segment")


def fact_value(record: Mapping[str, Any], fact: str) -> FactValue:
    """A rule's fact as the record carries it (``stored`` false where it does not).

    >>> fact_value({"traits": {"age": 41}}, "traits.age").value
    41
    >>> fact_value({"features": {}, "facts": {}}, "search_share").stored
    False
    """
    if fact in ("cluster", "persona"):
        return FactValue(
            fact=fact,
            value=record.get("segment" if fact == "cluster" else "persona"),
            stored=True,
            where="record",
        )
    if fact.startswith("traits."):
        traits = record.get("traits") or {}
        return FactValue(fact=fact, value=traits.get(fact[7:]), stored=True, where="traits")
    if fact.startswith("session."):  # the record's session (null: none open, facts at rest)
        session = record.get("session") or {}
        value = False if fact == "session.active" else session.get(fact[len("session.") :])
        if fact == "session.active" and session:
            value = True
        return FactValue(fact=fact, value=value, stored=True, where="session")
    for part in ("facts", "features"):
        values = record.get(part) or {}
        if fact in values:
            return FactValue(fact=fact, value=values[fact], stored=True, where=part)
    return FactValue(fact=fact, stored=False)


def customer_view(
    customer_id: str,
    record: Mapping[str, Any],
    changes: Sequence[Mapping[str, Any]],
    defs: Definitions,
) -> CustomerView:
    """Every segment of the record with why the customer is in it, and their recent changes.

    ``record`` is the record read for ``customer_id``: for an id merged into another customer,
    that customer's (or one that says ``merged_into``).
    """
    segments: list[Membership] = []
    if record.get("segment") is not None:
        segments.append(
            Membership(
                segment=f"cluster:{record['segment']}",
                kind="cluster",
                description=record.get("segment_label") or "",
                confidence=record.get("confidence"),
                version=f"model {record.get('model_version')}",
            )
        )
    if record.get("persona"):
        found = defs.get(f"persona:{record['persona']}")
        segments.append(
            Membership(
                segment=f"persona:{record['persona']}",
                kind="persona",
                description=found.description if found else "not in this server's personas file",
                confidence=record.get("persona_confidence"),
                reasons=list(record.get("persona_reasons") or []),
                definition=found.text if found else "",
                version=found.version if found else None,
            )
        )
    for name in record.get("rule_segments") or []:
        found = defs.get(f"rule:{name}")
        segments.append(
            Membership(
                segment=f"rule:{name}",
                kind=found.kind if found else "rule",
                description=found.description if found else "not in this server's segments file",
                definition=found.text if found else "",
                version=found.version if found else None,
                facts=[fact_value(record, f) for f in found.facts] if found else [],
            )
        )
    merged_into = record.get("merged_into")
    if merged_into is None and record.get("customer_id", customer_id) != customer_id:
        merged_into = record["customer_id"]
    return CustomerView(
        customer_id=customer_id,
        merged_ids=list(record.get("merged_ids") or []),
        merged_into=merged_into,
        note=f"{customer_id} was merged into {merged_into}: the record shown is theirs"
        if merged_into
        else "",
        segments=segments,
        changes=[Change.model_validate(c) for c in changes],
        record=dict(record),
    )


class Resolved(NamedTuple):
    """What a segment is: its full name, kind, description, definition, facts and version."""

    segment: str
    kind: str
    description: str
    definition: str
    facts: tuple[str, ...]
    version: str | None


def resolve_segment(
    name: str, defs: Definitions, model: Mapping[str, Any] | None, members: Mapping[str, int]
) -> Resolved | None:
    """What the segment named ``name`` is, or None if unknown.

    ``cluster:<id>`` is known when the model has that centre or someone is in it; a rule or
    persona when this server's definitions have it (a bare name: a rule, else a persona).
    """
    if name.startswith("cluster:"):
        snapshot = ModelSnapshot.from_dict(model) if model else None
        index = name[8:]
        if snapshot is not None and index.isdigit() and int(index) < len(snapshot.centres):
            centre = snapshot.centres[int(index)]
            text = "\n".join(
                f"{f}: {v:.3f}" for f, v in zip(snapshot.features, centre, strict=True)
            )
            version = f"model {snapshot.version}"
            return Resolved(name, "cluster", snapshot.describe(int(index)), text, (), version)
        if members.get(name):
            return Resolved(name, "cluster", "not in the current model", "", (), None)
        return None
    found = defs.get(name)
    if found is None:
        return None
    return Resolved(
        found.segment, found.kind, found.description, found.text, found.facts, found.version
    )


def buckets(segment: str, history: Sequence[Mapping[str, Any]]) -> list[Bucket]:
    """The segment's size per event-time bucket, and its entries and exits since the bucket
    before (None for the first, or where the totals went back: Redis lost them).

    >>> h = [{"bucket": 0, "sizes": {"s": 2}, "entered_total": {"s": 2}, "exited_total": {}},
    ...      {"bucket": 60, "sizes": {"s": 3}, "entered_total": {"s": 5}, "exited_total": {"s": 2}}]
    >>> [(b.size, b.entered, b.exited) for b in buckets("s", h)]
    [(2, None, None), (3, 3, 2)]
    """
    out: list[Bucket] = []
    before: tuple[int, int] | None = None
    for snap in history:
        size = int(snap.get("sizes", {}).get(segment, 0))
        totals = None
        if "entered_total" in snap:
            totals = (snap["entered_total"].get(segment, 0), snap["exited_total"].get(segment, 0))
        entered = exited = None
        if totals is not None and before is not None:
            entered, exited = totals[0] - before[0], totals[1] - before[1]
            if min(entered, exited) < 0:  # the totals went back: Redis lost them
                entered = exited = None
        out.append(Bucket(bucket=snap["bucket"], size=size, entered=entered, exited=exited))
        before = totals
    return out


def segment_view(
    resolved: Resolved,
    members: Mapping[str, int],
    customers: int,
    history: Sequence[Mapping[str, Any]],
    examples: Sequence[str],
) -> SegmentView:
    segment, kind, description, definition, facts, version = resolved
    size = members.get(segment, 0)
    return SegmentView(
        segment=segment,
        kind=kind,
        description=description,
        customers=size,
        share=round(size / customers, 4) if customers else 0.0,
        definition=definition,
        facts=list(facts),
        version=version,
        history=buckets(segment, history),
        examples=list(examples),
    )
