"""Hysteresis and minimum dwell: customers near a boundary do not flap; real moves still happen."""

from __future__ import annotations

import pytest

from models.clustering import ModelSnapshot
from models.features import FEATURE_VECTOR, CustomerProfile
from models.personas import Persona, PersonaCatalog
from models.segments import SegmentCatalog, SegmentChange, Stability, assign, remember

HOUR = 3_600_000
# Two centres that differ only in price_level: 0.2 and 0.6, so the boundary is at 0.4.
CENTRES = tuple(
    tuple(price if f == "price_level" else 0.5 for f in FEATURE_VECTOR) for price in (0.2, 0.6)
)
MODEL = ModelSnapshot(1, FEATURE_VECTOR, CENTRES, (10, 10))


def _walk(prices: list[float], stability: Stability) -> list[int | None]:
    """Score one customer whose price level wanders, one hour of event time per step."""
    profile = CustomerProfile("c", first_seen_ts=0, last_seen_ts=0)
    catalog = SegmentCatalog(stability=stability)
    out = []
    for step, price in enumerate(prices):
        profile.last_seen_ts = step * HOUR
        x = {f: 0.5 for f in FEATURE_VECTOR} | {"price_level": price}
        assignment = assign(profile, MODEL, catalog, x=x)
        remember(profile, assignment)
        out.append(assignment.segment)
    return out


WOBBLE = [0.38, 0.41, 0.39, 0.41, 0.38, 0.41, 0.39]


def test_without_hysteresis_a_boundary_customer_flaps() -> None:
    assert _walk(WOBBLE, Stability(hysteresis=0.0)) == [0, 1, 0, 1, 0, 1, 0]


def test_hysteresis_keeps_a_boundary_customer_in_place() -> None:
    assert _walk(WOBBLE, Stability(hysteresis=0.1)) == [0] * 7


def test_a_real_move_still_happens_with_hysteresis() -> None:
    assert _walk([0.3, 0.41, 0.5, 0.6], Stability(hysteresis=0.1)) == [0, 0, 1, 1]


def test_minimum_dwell_holds_a_move_until_it_has_passed() -> None:
    stability = Stability(hysteresis=0.0, min_dwell_ms=3 * HOUR)
    # Entered cluster 0 at hour 0; a clear move at hour 1 waits until hour 3.
    assert _walk([0.2, 0.6, 0.6, 0.6, 0.2], stability) == [0, 0, 0, 1, 1]


def test_a_kept_cluster_reports_a_confidence_below_one_half() -> None:
    profile = CustomerProfile("c", first_seen_ts=0, last_seen_ts=0, segment=0)
    x = {f: 0.5 for f in FEATURE_VECTOR} | {"price_level": 0.41}
    a = assign(profile, MODEL, SegmentCatalog(), x=x)
    assert a.segment == 0 and a.confidence is not None and a.confidence < 0.5


def test_persona_hysteresis() -> None:
    cheap = Persona("Cheap", "", {"avg_viewed_price": 20.0})
    dear = Persona("Dear", "", {"avg_viewed_price": 60.0})
    catalog = PersonaCatalog([cheap, dear])
    boundary = dict(Persona("x", "", {"avg_viewed_price": 36.0}).vector())
    assert catalog.match(boundary).name == "Dear"
    assert catalog.match(boundary, current="Cheap", hysteresis=0.2).name == "Cheap"
    far = dict(Persona("x", "", {"avg_viewed_price": 60.0}).vector())
    assert catalog.match(far, current="Cheap", hysteresis=0.2).name == "Dear"


def test_stability_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="hysteresis"):
        Stability(hysteresis=1.5)
    with pytest.raises(ValueError, match="dwell"):
        Stability(min_dwell_ms=-1)


def test_change_ids_are_deterministic_and_distinct() -> None:
    a = SegmentChange("c", "rule:vip", "entered", False, True, 5, "r", 1, 9, 5)
    again = SegmentChange.from_dict(a.to_dict())
    assert again == a and again.change_id == a.change_id
    later = SegmentChange("c", "rule:vip", "entered", False, True, 5, "r", 1, 10, 5)
    assert later.change_id != a.change_id
