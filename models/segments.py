"""Segment assignment of one customer, and the entered / exited changes between two of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.clustering import ModelSnapshot
from models.features import CustomerProfile, feature_vector

__all__ = ["SegmentAssignment", "SegmentChange", "assign", "changes_between"]


@dataclass(frozen=True, slots=True)
class SegmentAssignment:
    """Where one customer stands now; ``segment`` is None until the first model is published."""

    customer_id: str
    segment: int | None
    segment_label: str | None
    confidence: float | None
    model_version: int | None
    event_ts: int
    applied: int

    def record(self, profile: CustomerProfile, updated_at_ms: int) -> dict[str, Any]:
        """The serving record: what `segmenter get` prints and Redis holds per customer."""
        return {
            "customer_id": self.customer_id,
            "segment": self.segment,
            "segment_label": self.segment_label,
            # Named personas and rule segments arrive with the persona catalog and rule engine.
            "persona": None,
            "rule_segments": [],
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "model_version": self.model_version,
            "event_ts": self.event_ts,
            "updated_at": updated_at_ms,
            "events_applied": self.applied,
            "features": {**profile.value_features(), **profile.behavior()},
            "traits": profile.traits,
        }


@dataclass(frozen=True, slots=True)
class SegmentChange:
    """A customer entered or exited a segment; the wire shape is DESIGN.md's `segment-changes`."""

    customer_id: str
    segment: str
    change: str
    previous: int | None
    current: int | None
    event_ts: int
    reason: str
    model_version: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "segment": self.segment,
            "change": self.change,
            "previous": self.previous,
            "current": self.current,
            "event_ts": self.event_ts,
            "reason": self.reason,
            "model_version": self.model_version,
        }


def assign(profile: CustomerProfile, model: ModelSnapshot | None) -> SegmentAssignment:
    """Score a profile with the newest snapshot (or leave it unassigned while there is none)."""
    event_ts = profile.last_seen_ts or 0
    if model is None:
        return SegmentAssignment(
            profile.customer_id, None, None, None, None, event_ts, profile.applied
        )
    segment, _, confidence = model.predict(feature_vector(profile))
    return SegmentAssignment(
        customer_id=profile.customer_id,
        segment=segment,
        segment_label=model.describe(segment),
        confidence=confidence,
        model_version=model.version,
        event_ts=event_ts,
        applied=profile.applied,
    )


def changes_between(previous: int | None, now: SegmentAssignment) -> list[SegmentChange]:
    """The exited / entered pair for a behavioral-cluster move (exit first, for ordered consumers).

    >>> now = SegmentAssignment("c", 2, "x", 0.9, 7, 100, 5)
    >>> [c.change for c in changes_between(1, now)]
    ['exited', 'entered']
    >>> changes_between(2, now)
    []
    """
    if previous == now.segment:
        return []
    reason = "first assignment" if previous is None else "behavior moved nearer another centre"
    out = []
    if previous is not None:
        out.append(
            SegmentChange(
                now.customer_id,
                f"cluster:{previous}",
                "exited",
                previous,
                now.segment,
                now.event_ts,
                reason,
                now.model_version,
            )
        )
    if now.segment is not None:
        out.append(
            SegmentChange(
                now.customer_id,
                f"cluster:{now.segment}",
                "entered",
                previous,
                now.segment,
                now.event_ts,
                reason,
                now.model_version,
            )
        )
    return out
