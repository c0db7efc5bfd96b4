"""The traffic generator overlaps like real traffic: variation, mixed and switching customers,
bounces, bots and time zones; and it stays deterministic per seed."""

from __future__ import annotations

import bisect
import datetime as dt
import math
import statistics
from collections import Counter, defaultdict
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from stream.tools.generator import HOUR_MS, Message, Realism, TrafficGenerator


def _events(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        out.extend(m.value if isinstance(m.value, list) else [m.value])
    return out


def _price_band_purity(realism: Realism) -> float:
    """Persona purity of the average viewed price cut into one band per persona (cuts halfway,
    in log terms, between the personas' medians): 1.0 means price alone tells personas apart."""
    g = TrafficGenerator(customers=1000, seed=4, realism=realism)
    prices: dict[str, list[float]] = defaultdict(list)
    for _ in range(8):
        for cid in g.customer_ids:
            if g.kind(cid) != "pure":
                continue
            for e in _events(g.session(cid)):
                if e.get("type") == "product_view":
                    prices[cid].append(e["price"])
    average = {c: sum(v) / len(v) for c, v in prices.items()}
    by_persona: dict[str, list[float]] = defaultdict(list)
    for c, a in average.items():
        by_persona[g.truth[c].name].append(a)
    medians = sorted(statistics.median(v) for v in by_persona.values())
    cuts = [math.sqrt(a * b) for a, b in zip(medians, medians[1:], strict=False)]
    bands: dict[int, Counter[str]] = defaultdict(Counter)
    for c, a in average.items():
        bands[bisect.bisect(cuts, a)][g.truth[c].name] += 1
    return sum(b.most_common(1)[0][1] for b in bands.values()) / len(average)


def test_one_feature_no_longer_tells_personas_apart():
    assert _price_band_purity(Realism.none()) == 1.0  # the measure sees clean separation
    assert _price_band_purity(Realism()) < 0.95


def test_personas_overlap_in_local_hours_and_categories():
    g = TrafficGenerator(customers=600, seed=8, realism=Realism(zones=False))
    hours: dict[str, set[int]] = defaultdict(set)
    categories: dict[str, set[str]] = defaultdict(set)
    for _ in range(6):
        for cid in g.customer_ids:
            if g.kind(cid) != "pure":
                continue
            for e in _events(g.session(cid)):
                if e.get("type") == "product_view":
                    hours[g.truth[cid].name].add((e["ts"] // HOUR_MS) % 24)
                    categories[g.truth[cid].name].add(e["category"])
    assert hours["Executive Ella"] & hours["Techie Tom"]
    assert hours["Bargain Ben"] & hours["Loyal Larry"]
    assert categories["Executive Ella"] & categories["Browsing Bella"]
    assert categories["Bargain Ben"] & categories["Techie Tom"]


def test_mixed_and_switching_customers_are_present_and_switchers_change_their_truth():
    g = TrafficGenerator(customers=1000, seed=5)
    kinds = Counter(g.kind(c) for c in g.customer_ids)
    assert kinds["mixed"] >= 50 and kinds["switcher"] >= 20 and kinds["pure"] >= 700
    mixed = next(s for s in g.customers.values() if s.kind == "mixed")
    assert len({t.persona.name for t, _ in mixed.tastes}) == 2
    switcher = next(s for s in g.customers.values() if s.kind == "switcher")
    assert switcher.then is not None
    before, after = switcher.tastes[0][0].persona.name, switcher.then.persona.name
    assert before != after
    for _ in range(switcher.switch_after):
        g.session(switcher.customer_id)
        assert g.truth[switcher.customer_id].name == before
    g.session(switcher.customer_id)
    assert g.truth[switcher.customer_id].name == after
    assert switcher.persona.name == after


def test_bots_click_a_lot_and_bounces_visit_once():
    g = TrafficGenerator(customers=1000, seed=6)
    bots = [c for c in g.customer_ids if g.kind(c) == "bot"]
    assert 1 <= len(bots) <= 10
    for bot in bots:
        messages = g.session(bot)
        assert {m.source for m in messages} == {"clickstream"}  # no identify, no purchase
        assert len(_events(messages)) >= 60
    visitors = []
    for _ in range(2000):
        cid = g.pick()
        if g.kind(cid) == "bounce":
            visitors.append(cid)
            events = _events(g.session(cid))
            assert len(events) == 1 and events[0]["type"] == "page_view"
    assert 100 <= len(visitors) <= 300 and len(set(visitors)) == len(visitors)
    assert not set(visitors) & set(g.truth)


def test_customers_live_in_time_zones_and_identify_says_which():
    g = TrafficGenerator(customers=400, seed=9)
    zones: Counter[str] = Counter()
    near: list[int] = []
    for cid in g.customer_ids:
        if g.kind(cid) != "pure":
            continue
        messages = g.session(cid)
        identify = next(m for m in messages if m.source == "identify")
        zone = identify.value["traits"]["timezone"]  # type: ignore[call-overload,index]
        zones[zone] += 1
        spec = g.customers[cid]
        assert zone == spec.timezone
        # The visit is at one of the persona's local hours, moved by the customer's own shift
        # and a session's jitter.
        view = next(e for e in _events(messages) if e.get("type") == "product_view")
        local = dt.datetime.fromtimestamp(view["ts"] / 1000, ZoneInfo(zone)).hour
        near.append(min(min((local - h) % 24, (h - local) % 24) for h in spec.persona.hours))
    assert sum(n <= 3 for n in near) >= 0.9 * len(near), Counter(near)
    assert len(zones) >= 6
    assert {z.split("/")[0] for z in zones} >= {"America", "Europe"}


def test_same_seed_same_traffic_other_seed_other_traffic():
    def run(seed: int) -> list[Message]:
        g = TrafficGenerator(customers=200, seed=seed)
        return [m for _ in range(300) for m in g.session(g.pick())]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_clean_traffic_has_none_of_it():
    g = TrafficGenerator(customers=300, seed=2, realism=Realism.none())
    assert {g.kind(c) for c in g.customer_ids} == {"pure"}
    assert all(g.kind(g.pick()) != "bounce" for _ in range(500))
    assert {s.timezone for s in g.customers.values()} == {"UTC"}


@pytest.mark.parametrize(
    "bad", [{"variation": -0.1}, {"mixed": 0.6, "switchers": 0.5}, {"bounces": 1.0}]
)
def test_impossible_realism_is_refused(bad: dict[str, float]):
    with pytest.raises(ValueError):
        Realism(**bad)  # type: ignore[arg-type]
