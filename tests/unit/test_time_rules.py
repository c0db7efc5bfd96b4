"""Rules on facts that move with event time alone (issue 16, part 2): due times from every
rule's thresholds, so such a rule enters and exits on the first watermark advance past its
threshold with no event of the customer's own, exactly as lifecycle does; and a time-driven
re-evaluation writes the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from models.facts import LifecyclePolicy, RfmCuts, TimeWatch, customer_facts
from models.features import DAY_MS, CustomerProfile, DecayedSum
from models.rules import RuleSegment, Threshold, compile_condition
from models.schedule import DueSchedule
from models.segments import SegmentCatalog
from models.step import RecordWrite, SegmentStep, SourceMessage, StepOutcome
from stream.catalog import load_segments

T0 = 1_795_000_000_000
HOUR_MS = 3_600_000
SESSION_MS = 30 * 60_000  # a visit ends 30 minutes after its last event
#: A lifecycle that stays out of the way: never "new", active for 1,000 days.
QUIET_LIFECYCLE = LifecyclePolicy(new_days=0, at_risk_days=1000, lapsed_days=2000)


def rule(name: str, when: dict[str, Any]) -> RuleSegment:
    return RuleSegment.compile(name, "lifecycle", "", when)


def quiet_90d() -> RuleSegment:
    return rule("quiet_90d", {"days_since_last_purchase": {"gt": 90}})


class Run:
    """The step fed one message at a time, its outcome applied as the worker applies it."""

    def __init__(
        self,
        rules: list[RuleSegment],
        lifecycle: LifecyclePolicy = LifecyclePolicy(),  # noqa: B008 - frozen
        rfm: RfmCuts = RfmCuts(),  # noqa: B008 - frozen
    ) -> None:
        self.catalog = SegmentCatalog(rules=tuple(rules), lifecycle=lifecycle, rfm=rfm)
        self.step = SegmentStep(self.catalog)
        self.profiles: dict[str, CustomerProfile] = {}
        self.schedule = DueSchedule()
        self.watermark = 0
        self.offsets: dict[str, int] = {}
        self.records: dict[str, RecordWrite] = {}
        self.outcomes: list[StepOutcome] = []
        self.n = 0

    def send(self, source: str, value: dict[str, Any]) -> StepOutcome:
        self.n += 1
        value = {"event_id": f"e{self.n}", **value}
        log = f"{source}/0"
        offset = self.offsets[log] = self.offsets.get(log, -1) + 1
        key = value["customer_id"].encode()
        message = SourceMessage(source, log, offset, key, orjson.dumps(value))
        stored = {c: CustomerProfile.from_state(p.to_state()) for c, p in self.profiles.items()}
        out = self.step.run([message], stored, None, self.watermark, self.schedule, 0, 0.0)
        self.watermark = out.watermark
        for cid, profile in out.states.items():
            if profile is not None:
                self.profiles[cid] = profile
        for write in out.writes:
            self.records[write.customer_id] = write
        self.outcomes.append(out)
        return out

    def buy(self, cid: str, ts: int, amount: float = 10.0) -> StepOutcome:
        return self.send("purchases", {"customer_id": cid, "ts": ts, "amount": amount})

    def click(self, cid: str, ts: int) -> StepOutcome:
        return self.send("clickstream", {"customer_id": cid, "ts": ts, "type": "page_view"})

    def advance(self, ts: int) -> StepOutcome:
        """Move event time with another customer's event, as other traffic does."""
        return self.click("clock", ts)

    def rules_of(self, cid: str) -> list[str]:
        return list(self.records[cid].record["rule_segments"])

    def writes_of(self, cid: str) -> list[RecordWrite]:
        return [w for out in self.outcomes for w in out.writes if w.customer_id == cid]


def first_ms(holds: Any, start: int) -> int:
    """The first millisecond from ``start`` at which ``holds(t)`` is true (brute force)."""
    t = start
    while not holds(t):
        t += 1
    return t


def days(ts: int, since: int) -> float:
    """A days_since_* fact as README defines it: days, to three decimals."""
    return round((ts - since) / DAY_MS, 3)


# -- compile time ---------------------------------------------------------------------------


def test_a_compiled_rule_knows_the_thresholds_it_compares_facts_with() -> None:
    comparisons: list[tuple[str, str, Any]] = []
    compile_condition(
        "s",
        {"all": [{"days_since_last_seen": {"between": [7, 30]}}, {"country": "DE"}]},
        comparisons=comparisons,
    )
    assert comparisons == [("days_since_last_seen", "between", [7, 30]), ("country", "eq", "DE")]
    segment = rule(
        "s",
        {
            "any": [
                {"days_since_last_purchase": {"gt": 90, "lte": 120}},
                {"not": {"days_since_first_seen": {"in": [1, 2]}}},
                {"value_tier": {"in": ["gold"]}},
                {"orders_total": 3},
            ]
        },
    )
    assert segment.thresholds == (
        Threshold("days_since_last_purchase", 90.0, False),
        Threshold("days_since_last_purchase", 120.0, False),
        Threshold("days_since_first_seen", 1.0, True),
        Threshold("days_since_first_seen", 1.0, False),
        Threshold("days_since_first_seen", 2.0, True),
        Threshold("days_since_first_seen", 2.0, False),
        Threshold("orders_total", 3.0, True),
        Threshold("orders_total", 3.0, False),
    )
    assert segment.fields == {
        "days_since_last_purchase",
        "days_since_first_seen",
        "value_tier",
        "orders_total",
    }
    watch = SegmentCatalog(rules=(segment,)).watch
    assert watch.thresholds == (
        ("days_since_first_seen", (1.0, 2.0), (1.0, 2.0)),
        ("days_since_last_purchase", (), (90.0, 120.0)),
    )
    assert watch.rfm == ("monetary",)  # value_tier is scored on the monetary cut points


def test_rules_on_facts_that_do_not_move_with_time_add_no_due_times() -> None:
    catalog = SegmentCatalog(rules=(rule("buyer", {"orders_total": {"gte": 1}}),))
    assert not catalog.watch
    p = CustomerProfile(
        "c", orders_total=1, first_seen_ts=T0, last_seen_ts=T0, last_purchase_ts=T0, applied=1
    )
    assert catalog.next_change(p, T0) == catalog.lifecycle.next_change(p, T0)


def test_a_segments_file_compiles_rules_with_their_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "segments.yaml"
    path.write_text("segments:\n  quiet_90d:\n    when: {days_since_last_purchase: {gt: 90}}\n")
    (segment,) = load_segments(path)
    assert segment.thresholds == (Threshold("days_since_last_purchase", 90.0, False),)
    assert SegmentCatalog(rules=(segment,)).watch.thresholds == (
        ("days_since_last_purchase", (), (90.0,)),
    )


# -- through the step -----------------------------------------------------------------------


def test_quiet_90d_enters_on_the_first_watermark_advance_past_90_days_with_no_event_of_its_own():
    run = Run([quiet_90d()], QUIET_LIFECYCLE)
    run.buy("a", T0)
    assert run.rules_of("a") == []
    # The exact first millisecond at which "days since last purchase > 90" holds.
    crossing = first_ms(lambda t: days(t, T0) > 90, T0 + 90 * DAY_MS - 60_000)
    assert run.profiles["a"] and run.outcomes[-1].due["a"] == crossing
    run.advance(T0 + 90 * DAY_MS)  # exactly 90 days: not past
    assert run.rules_of("a") == [] and run.writes_of("a")[-1].record["evaluated_at"] == T0
    out = run.advance(crossing - 1)
    assert [w.customer_id for w in out.writes] == ["clock"]  # a is not due yet
    out = run.advance(crossing)
    write = next(w for w in out.writes if w.customer_id == "a")
    assert write.record["rule_segments"] == ["quiet_90d"]
    assert (write.event_ts, write.applied) == (T0, 1)  # no new event of theirs
    assert write.record["evaluated_at"] == crossing
    assert write.record["facts"]["days_since_last_purchase"] == 90.001
    (change,) = [c for c in out.changes if c.customer_id == "a"]
    assert (change.segment, change.change, change.evaluated_at) == (
        "rule:quiet_90d",
        "entered",
        crossing,
    )
    assert change.reason == "rule holds as event time passed a threshold"
    assert run.profiles["a"].rule_segments == ["quiet_90d"]
    # A new purchase of theirs makes them leave at once, on the event.
    out = run.buy("a", crossing + DAY_MS)
    assert run.rules_of("a") == []
    assert [(c.segment, c.change) for c in out.changes if c.customer_id == "a"] == [
        ("rule:quiet_90d", "exited")
    ]


def test_a_big_watermark_jump_applies_the_crossing_at_the_watermark_once() -> None:
    run = Run([quiet_90d()], QUIET_LIFECYCLE)
    run.buy("a", T0)
    out = run.advance(T0 + 400 * DAY_MS)
    (write,) = [w for w in out.writes if w.customer_id == "a"]
    assert write.record["rule_segments"] == ["quiet_90d"]
    assert write.record["evaluated_at"] == T0 + 400 * DAY_MS
    assert out.due["a"] == QUIET_LIFECYCLE.next_change(run.profiles["a"], T0 + 400 * DAY_MS)


def test_between_enters_at_its_low_bound_and_exits_past_its_high_bound() -> None:
    run = Run(
        [rule("cooling", {"days_since_last_purchase": {"between": [30, 60]}})], QUIET_LIFECYCLE
    )
    run.buy("a", T0 + 5 * 60_000)
    bought = T0 + 5 * 60_000
    enter = first_ms(lambda t: days(t, bought) >= 30, bought + 30 * DAY_MS - 60_000)
    leave = first_ms(lambda t: days(t, bought) > 60, bought + 60 * DAY_MS - 60_000)
    assert run.outcomes[-1].due["a"] == enter
    members: dict[int, bool] = {}
    t = T0
    while t < T0 + 70 * DAY_MS:
        t += HOUR_MS
        run.advance(t)
        members[t] = "cooling" in run.rules_of("a")
    first_in = min(t for t, inside in members.items() if inside)
    first_out = min(t for t, inside in members.items() if t > first_in and not inside)
    assert first_in == min(t for t in members if t >= enter)  # the first advance past each
    assert first_out == min(t for t in members if t >= leave)
    # Written on the purchase and at the two crossings, nowhere else.
    evaluated = [w.record["evaluated_at"] for w in run.writes_of("a")]
    assert evaluated == [T0 + 5 * 60_000, first_in, first_out]


def test_not_of_a_time_rule_enters_when_the_inner_rule_stops_holding() -> None:
    run = Run([rule("gone_quiet", {"not": {"days_since_last_seen": {"lt": 14}}})], QUIET_LIFECYCLE)
    run.click("v", T0)  # a visitor who never buys
    crossing = first_ms(lambda t: days(t, T0) >= 14, T0 + 14 * DAY_MS - 60_000)
    assert run.outcomes[-1].due["v"] == T0 + SESSION_MS  # the end of the visit comes first
    run.advance(crossing - 1)
    assert run.rules_of("v") == [] and run.outcomes[-1].due["v"] == crossing
    run.advance(crossing)
    assert run.rules_of("v") == ["gone_quiet"]
    assert run.records["v"].record["evaluated_at"] == crossing
    run.click("v", crossing + 1)  # back: the inner rule holds again
    assert run.rules_of("v") == []


def test_a_rule_and_the_lifecycle_move_together_each_on_the_first_advance_past_due() -> None:
    policy = LifecyclePolicy()  # new 30 days, at risk 60, lapsed 180
    run = Run([quiet_90d()], policy)
    run.buy("a", T0)
    run.buy("b", T0 + 10 * DAY_MS)
    seen: list[tuple[str, str, bool]] = []
    t = T0 + 10 * DAY_MS
    while t < T0 + 200 * DAY_MS:
        t += 7 * HOUR_MS
        run.advance(t)
        for cid, last in (("a", T0), ("b", T0 + 10 * DAY_MS)):
            record = run.records[cid].record
            profile = run.profiles[cid]
            # After every advance the record shows exactly what holds at the watermark.
            assert record["lifecycle"] == policy.stage(profile, t), (cid, t)
            assert ("quiet_90d" in record["rule_segments"]) == (days(t, last) > 90), (cid, t)
            state = (cid, record["lifecycle"], "quiet_90d" in record["rule_segments"])
            if not seen or state not in seen:
                seen.append(state)
    assert [s for s in seen if s[0] == "a"] == [
        ("a", "new", False),
        ("a", "active", False),
        ("a", "at_risk", False),
        ("a", "at_risk", True),
        ("a", "lapsed", True),
    ]
    # Written once per crossing (30, 60, 90 and 180 days), not on every advance.
    assert len(run.writes_of("a")) == 1 + 4  # its purchase, then one write per due time


def test_a_customer_with_no_purchase_is_never_quiet_and_gets_no_rule_due_time() -> None:
    run = Run([quiet_90d(), rule("not_quiet", {"not": {"days_since_last_purchase": {"gt": 90}}})])
    run.click("v", T0)
    profile = run.profiles["v"]
    assert run.catalog.watch.next_change(profile, T0) is None
    lifecycle_due = run.catalog.lifecycle.next_change(profile, T0)
    assert lifecycle_due and run.outcomes[-1].due["v"] == min(T0 + SESSION_MS, lifecycle_due)
    run.advance(T0 + 400 * DAY_MS)
    record = run.records["v"].record
    assert record["rule_segments"] == ["not_quiet"] and record["lifecycle"] == "lapsed"
    assert record["facts"]["days_since_last_purchase"] is None


def test_a_time_driven_evaluation_writes_the_record_even_when_no_segment_changed() -> None:
    """No lifecycle rule in the file: the stage, evaluated_at and days_since_* in the record
    still follow event time (they stayed as of the last event before)."""
    run = Run([rule("buyer", {"orders_total": {"gte": 1}})])
    run.buy("a", T0)
    out = run.advance(T0 + 61 * DAY_MS)  # past new (30 days) and active (60 days)
    (write,) = [w for w in out.writes if w.customer_id == "a"]
    assert [c for c in out.changes if c.customer_id == "a"] == []
    assert write.record["lifecycle"] == "at_risk"
    assert write.record["evaluated_at"] == T0 + 61 * DAY_MS
    assert write.record["facts"]["days_since_last_purchase"] == 61.0
    assert write.record["features"]["monetary_decayed"] < 10.0  # decayed to the watermark
    assert run.profiles["a"].lifecycle == "at_risk"


def test_many_small_advances_write_a_customer_once_at_the_crossing() -> None:
    run = Run([rule("fresh", {"days_since_last_seen": {"lte": 0}})], QUIET_LIFECYCLE)
    run.click("a", T0)
    assert run.rules_of("a") == ["fresh"]
    due = run.outcomes[-1].due["a"]
    assert due is not None and due > T0 and days(due - 1, T0) == 0.0 < days(due, T0)
    for step in range(1, 200):  # many small advances: one write at the crossing
        run.advance(T0 + step * 1000)
    assert [w.record["rule_segments"] for w in run.writes_of("a")] == [["fresh"], []]


def test_a_decayed_value_rule_exits_on_the_first_advance_past_its_crossing() -> None:
    run = Run([rule("high_value", {"customer_value_estimate": {"gte": 1000}})], QUIET_LIFECYCLE)
    run.buy("a", T0, amount=500.0)  # 500 a purchase, about 4,200 a year at first
    assert run.rules_of("a") == ["high_value"]
    due = run.outcomes[-1].due["a"]
    profile = run.profiles["a"]
    assert due is not None

    def estimate(t: int) -> float:
        return float(customer_facts(profile, t)["customer_value_estimate"])

    assert estimate(due - 1) >= 1000 > estimate(due)  # the exact millisecond
    run.advance(due - 1)
    assert run.rules_of("a") == ["high_value"]
    run.advance(due)
    assert run.rules_of("a") == [] and run.records["a"].record["evaluated_at"] == due


def test_value_tier_follows_the_decay_of_spend_through_the_rfm_cut_points() -> None:
    cuts = RfmCuts((7.0, 21.0, 45.0, 90.0), (0.5, 1.0, 2.0, 4.0), (30.0, 80.0, 200.0, 500.0))
    run = Run([rule("vip", {"value_tier": {"in": ["platinum", "gold"]}})], QUIET_LIFECYCLE, cuts)
    run.buy("a", T0, amount=600.0)  # monetary 600: platinum, then gold below 500, then silver
    tiers = [customer_facts(run.profiles["a"], T0, cuts=cuts)["value_tier"]]
    t = T0
    while t < T0 + 60 * DAY_MS:
        t += 6 * HOUR_MS
        run.advance(t)
        facts = customer_facts(run.profiles["a"], t, cuts=cuts)
        assert ("vip" in run.rules_of("a")) == (facts["value_tier"] in ("platinum", "gold")), t
        if facts["value_tier"] != tiers[-1]:
            tiers.append(facts["value_tier"])
    assert tiers == ["platinum", "gold", "silver"]
    # Re-evaluated where the tier (or another cut) changes, not every advance.
    assert len(run.writes_of("a")) < 10


# -- the due time, exactly ------------------------------------------------------------------

TIME_RULE_FACTS = (
    "days_since_last_purchase",
    "days_since_first_seen",
    "days_since_last_seen",
    "frequency_decayed",
    "monetary_decayed",
    "customer_value_estimate",
)
OPERATORS = ("gt", "gte", "lt", "lte", "eq", "ne", "between")


@st.composite
def time_rules(draw: st.DrawFn) -> list[RuleSegment]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        fact = draw(st.sampled_from(TIME_RULE_FACTS))
        op = draw(st.sampled_from(OPERATORS))
        # Thresholds on the facts' own grids and off them.
        number = st.one_of(
            st.integers(0, 400).map(float),
            st.floats(0, 400, allow_nan=False).map(lambda x: round(x, 4)),
        )
        if op == "between":
            low, high = sorted((draw(number), draw(number)))
            value: Any = [low, high]
        else:
            value = draw(number)
        when: dict[str, Any] = {fact: {op: value}}
        if draw(st.booleans()):
            when = {"not": when}
        out.append(rule(f"r{i}", when))
    return out


@settings(max_examples=300, deadline=None)
@given(
    rules=time_rules(),
    purchase_age=st.one_of(st.none(), st.integers(0, 300 * DAY_MS)),
    first_age=st.integers(0, 300 * DAY_MS),
    seen_age=st.integers(0, 300 * DAY_MS),
    spend=st.floats(0, 5000, allow_nan=False),
    orders=st.floats(0, 10, allow_nan=False),
    other_due=st.one_of(st.none(), st.integers(1, 300 * DAY_MS)),
)
def test_between_now_and_the_due_time_no_rule_changes_and_at_it_one_comparison_turns(
    rules: list[RuleSegment],
    purchase_age: int | None,
    first_age: int,
    seen_age: int,
    spend: float,
    orders: float,
    other_due: int | None,
) -> None:
    now = T0 + 400 * DAY_MS
    last_seen = now - min(seen_age, first_age)
    last_purchase = (
        None if purchase_age is None else min(last_seen, max(now - purchase_age, now - first_age))
    )
    ref = last_purchase or 0
    p = CustomerProfile(
        "c",
        orders_total=0 if last_purchase is None else 1,
        first_seen_ts=now - first_age,
        last_seen_ts=last_seen,
        last_purchase_ts=last_purchase,
        frequency_decayed=DecayedSum(orders if last_purchase else 0.0, ref),
        monetary_decayed=DecayedSum(spend if last_purchase else 0.0, ref),
    )
    watch = TimeWatch.of(
        {f for r in rules for f in r.fields}, [t for r in rules for t in r.thresholds]
    )
    due = watch.next_change(p, now)
    # Given a due time found already (the lifecycle's), the earlier of the two.
    before = None if other_due is None else now + other_due
    earliest = min((t for t in (due, before) if t is not None), default=None)
    assert watch.next_change(p, now, before=before) == earliest
    comparisons = [t for r in rules for t in r.thresholds]

    def state(t: int) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        facts = customer_facts(p, t)
        turns = tuple(
            facts[c.fact] is not None
            and (facts[c.fact] >= c.value if c.inclusive else facts[c.fact] > c.value)
            for c in comparisons
        )
        return turns, tuple(r.matches(facts) for r in rules)

    at_now = state(now)
    if due is None:
        for ahead in (DAY_MS, 100 * DAY_MS, 10_000 * DAY_MS):
            assert state(now + ahead) == at_now
        return
    assert due > now
    for t in (now + 1, (now + due) // 2, due - 1):
        assert state(t) == at_now, t
    assert state(due)[0] != at_now[0]  # one comparison turns at the due time itself
