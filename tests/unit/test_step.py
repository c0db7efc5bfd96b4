"""The per-batch step, with no I/O: what a batch of messages causes, effect by effect."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from models.clustering import ModelSnapshot
from models.facts import LifecyclePolicy
from models.features import DAY_MS, FEATURE_VECTOR, CustomerProfile
from models.rules import RuleSegment, compile_condition
from models.schedule import DueSchedule
from models.segments import SegmentCatalog
from models.step import FORGET, SamplingPolicy, SegmentStep, SourceMessage, StepOutcome

T0 = 1_795_000_000_000


def buyer_rule() -> RuleSegment:
    return RuleSegment(
        "buyer", "behavioral", "bought", compile_condition("buyer", {"orders_total": {"gte": 1}})
    )


def purchase(
    cid: str, n: int, ts: int = T0, offset: int = 0, log: str = "purchases/0"
) -> SourceMessage:
    value = {"event_id": f"p{n}", "customer_id": cid, "ts": ts, "amount": 10.0}
    return SourceMessage("purchases", log, offset, cid.encode(), orjson.dumps(value))


def click(cid: str, n: int, ts: int = T0, offset: int = 0, session: str = "s1") -> SourceMessage:
    value = {
        "event_id": f"c{n}",
        "type": "page_view",
        "customer_id": cid,
        "ts": ts,
        "session_id": session,
    }
    return SourceMessage("clickstream", "clickstream/0", offset, cid.encode(), orjson.dumps(value))


def forget(cid: str, offset: int = 0) -> SourceMessage:
    return SourceMessage(FORGET, "forget/0", offset, cid.encode(), None)


class Harness:
    """The step with a dict of profiles standing in for the table, applied as the shell does."""

    def __init__(self, step: SegmentStep | None = None) -> None:
        self.step = step or SegmentStep(SegmentCatalog(rules=(buyer_rule(),)), worker_id="w")
        self.profiles: dict[str, CustomerProfile] = {}
        self.schedule = DueSchedule()
        self.watermark = 0
        self.model: ModelSnapshot | None = None

    def run(
        self, *messages: SourceMessage, clock: float = 0.0, expiries: int | None = None
    ) -> StepOutcome:
        out = self.step.run(
            list(messages),
            self.stored(),
            self.model,
            self.watermark,
            self.schedule,
            123,
            clock,
            expiries,
        )
        self.save(out)
        return out

    def stored(self) -> dict[str, CustomerProfile]:
        # A fresh copy each time, as the worker decodes the table's bytes: the step must not
        # rely on objects kept between batches.
        return {c: CustomerProfile.from_state(p.to_state()) for c, p in self.profiles.items()}

    def save(self, out: StepOutcome) -> None:
        self.watermark = out.watermark
        for cid, profile in out.states.items():
            if profile is None:
                self.profiles.pop(cid, None)
            else:
                self.profiles[cid] = profile


def test_a_batch_gives_records_changes_states_and_due_times() -> None:
    h = Harness()
    out = h.run(click("a", 1, offset=0), purchase("a", 1, T0 + 1000, offset=0))
    assert out.watermark == T0 + 1000
    assert [w.customer_id for w in out.writes] == ["a"]  # one score per customer per batch
    write = out.writes[0]
    assert (write.event_ts, write.applied) == (T0 + 1000, 2)
    assert write.record["rule_segments"] == ["buyer"] and write.record["worker_id"] == "w"
    assert write.record["updated_at"] == 123
    assert "rule:buyer" in write.members
    assert [(c.segment, c.change) for c in out.changes] == [("rule:buyer", "entered")]
    assert out.states["a"].orders_total == 1
    assert out.due["a"] == T0 + 30 * 60_000  # its visit's end (its clicks'), before the lifecycle's
    assert out.events == {"clickstream": 1, "purchases": 1}
    assert out.counters == {"events": 2, "messages": 2, "records": 1}


def test_bad_messages_become_dead_letters_with_reasons_and_the_rest_applies() -> None:
    h = Harness()
    no_key = SourceMessage("purchases", "purchases/0", 1, None, b"{}")
    broken = SourceMessage("purchases", "purchases/0", 2, b"b", b"{not json")
    wrong_key = purchase("b", 1, offset=3)
    wrong_key = SourceMessage("purchases", "purchases/0", 3, b"other", wrong_key.value)
    out = h.run(no_key, purchase("a", 1), broken, wrong_key)
    assert [d.message.offset for d in out.dead] == [1, 2, 3]
    assert "key" in out.dead[0].reason and "JSON" in out.dead[1].reason
    assert "does not match" in out.dead[2].reason
    assert list(out.states) == ["a"] and out.counters["dead_letters"] == 3


def test_a_redelivered_batch_changes_nothing_and_a_resent_event_counts_once() -> None:
    h = Harness()
    h.run(purchase("a", 1, offset=0))
    again = h.run(purchase("a", 1, offset=0))  # the same message (redelivery)
    assert again.writes == [] and again.states == {} and again.changes == []
    resent = h.run(purchase("a", 1, offset=1))  # the same event in a new message
    assert resent.writes == [] and h.profiles["a"].orders_total == 1


def test_an_older_event_never_moves_the_watermark_back() -> None:
    h = Harness()
    h.run(purchase("a", 1, T0 + 5000))
    out = h.run(purchase("b", 2, T0, offset=1))
    assert out.watermark == T0 + 5000
    assert out.writes[0].event_ts == T0


def test_an_erasure_drops_what_came_before_it_and_later_events_start_a_new_profile() -> None:
    h = Harness()
    h.run(purchase("a", 1, offset=0), purchase("a", 2, offset=1))
    out = h.run(purchase("a", 3, offset=2), forget("a"), purchase("a", 4, T0 + 10, offset=3))
    assert out.erased == ["a"]
    assert out.states["a"] is not None and out.states["a"].orders_total == 1  # only p4
    assert out.writes[0].record["features"]["orders_total"] == 1
    alone = h.run(forget("a", 1))
    assert alone.erased == ["a"] and alone.states == {"a": None} and alone.writes == []
    assert "a" not in h.profiles and len(h.schedule) == 0


def test_the_watermark_expires_customers_whose_stage_came_due_through_the_same_step() -> None:
    catalog = SegmentCatalog(lifecycle=LifecyclePolicy(new_days=7, at_risk_days=30, lapsed_days=90))
    h = Harness(SegmentStep(catalog))
    h.run(purchase("a", 1, T0), purchase("a", 2, T0 + DAY_MS, offset=1))
    h.run(purchase("a", 3, T0 + 2 * DAY_MS, offset=2))
    assert h.profiles["a"].lifecycle == "new"
    # Another customer's event 40 days later moves event time: "a" is now at risk.
    out = h.run(purchase("b", 9, T0 + 40 * DAY_MS, offset=3))
    assert {w.customer_id for w in out.writes} == {"a", "b"}
    assert h.profiles["a"].lifecycle == "at_risk"
    assert out.counters["expired"] == 1
    # Without new events time stands still: nothing more expires.
    assert h.run().writes == []


def test_samples_follow_the_policy_and_the_cap_on_the_given_clock() -> None:
    step = SegmentStep(SegmentCatalog(), SamplingPolicy(every=1, min_events=1, max_per_second=2))
    h = Harness(step)
    out = h.run(*(purchase(f"c{i}", i, offset=i) for i in range(5)), clock=0.0)
    assert len(out.samples) == 2  # the bucket holds one second's worth
    sample = out.samples[0]
    assert set(sample["x"]) == set(FEATURE_VECTOR) and sample["rfm"] is not None
    later = h.run(*(purchase(f"d{i}", 10 + i, offset=10 + i) for i in range(5)), clock=1.0)
    assert len(later.samples) == 2


def test_a_first_model_assigns_customers_seen_before_it() -> None:
    h = Harness()
    h.run(purchase("a", 1), click("b", 2))
    centres = ((0.0,) * len(FEATURE_VECTOR), (1.0,) * len(FEATURE_VECTOR))
    h.model = ModelSnapshot(1, FEATURE_VECTOR, centres, (1, 1))
    out = h.step.rescore(
        ["a", "b"],
        h.stored(),
        h.model,
        h.watermark,
        h.schedule,
        0,
        only=lambda p: p.segment is None,
    )
    assert {w.customer_id for w in out.writes} == {"a", "b"}
    assert all(w.segment == 0 for w in out.writes)
    assert [c.segment for c in out.changes if c.customer_id == "a"][0] == "cluster:0"


@pytest.mark.parametrize("value", [b"[]", b"42", b'{"event_id": 1}'])
def test_every_bad_value_is_a_dead_letter_never_an_exception(value: bytes) -> None:
    out = Harness().run(SourceMessage("clickstream", "clickstream/0", 0, b"a", value))
    assert len(out.dead) == 1 and out.writes == []


def test_a_step_re_evaluates_a_bounded_number_of_due_customers_and_empty_steps_finish_them():
    """After a restart every customer can be due at once (a million, at the bench's size: one
    step then held the worker for minutes and gigabytes). A step takes at most
    ``max_expiries``; an empty step (the worker's timer, or the next batch) takes the rest."""
    import orjson

    from models.features import DAY_MS

    step = SegmentStep(SegmentCatalog())
    step.max_expiries = 40
    t0 = 1_795_000_000_000
    first = [
        SourceMessage(
            "purchases",
            "purchases/0",
            i,
            f"c-{i}".encode(),
            orjson.dumps({"event_id": f"e{i}", "customer_id": f"c-{i}", "ts": t0, "amount": 5.0}),
        )
        for i in range(100)
    ]
    schedule = DueSchedule()
    out = step.run(first, {}, None, 0, schedule, 0, 0.0)
    profiles = dict(out.states)
    clock = SourceMessage(
        "clickstream",
        "clickstream/0",
        0,
        b"clock",
        orjson.dumps(
            {"event_id": "k", "type": "page_view", "customer_id": "clock", "ts": t0 + 400 * DAY_MS}
        ),
    )
    moved = step.run([clock], profiles, None, out.watermark, schedule, 0, 0.0)
    assert moved.counters["expired"] == 40  # 100 due: 40 now
    profiles.update({c: p for c, p in moved.states.items() if p is not None})
    expired, watermark = 40, moved.watermark
    while schedule.has_due(watermark):
        more = step.run([], profiles, None, watermark, schedule, 0, 0.0)
        assert 0 < more.counters.get("expired", 0) <= 40
        expired += more.counters["expired"]
        profiles.update({c: p for c, p in more.states.items() if p is not None})
    assert expired >= 100 and all(
        p.lifecycle == "lapsed" for c, p in profiles.items() if c != "clock"
    )


def test_a_batch_re_evaluates_about_as_many_due_customers_as_it_has_messages():
    """A burst of due customers does not hold a small batch back: it takes
    ``MIN_EXPIRIES``, a larger batch as many as its messages, an empty step (the worker's
    timer) ``max_expiries`` or what it is given."""
    from models.step import MIN_EXPIRIES

    h = Harness()
    h.run(*(purchase(f"c-{i}", i, offset=i) for i in range(1_000)))
    later = T0 + 400 * DAY_MS  # every purchaser lapsed: 1,000 due

    def expired(*messages: SourceMessage, expiries: int | None = None) -> int:
        return h.run(*messages, expiries=expiries).counters.get("expired", 0)

    def clicks(n: int) -> list[SourceMessage]:
        return [click(f"k-{j}", j, ts=later, offset=j) for j in range(n)]

    assert expired(*clicks(1)) == MIN_EXPIRIES
    assert expired(*clicks(300)) == 300
    assert expired(expiries=50) == 50
    assert expired() == 1_000 - MIN_EXPIRIES - 300 - 50  # the rest: max_expiries
    assert not h.schedule.has_due(h.watermark)


def _generated_state(customers: int = 400):
    """Customers of generated traffic through the step, with a model: a small Replay."""
    from stream.settings import Settings
    from stream.tools.evaluate import Replay
    from stream.tools.generator import TrafficGenerator

    replay = Replay(Settings(warmup_samples=50))
    generator = TrafficGenerator(customers=customers, seed=5)
    for cid in generator.customer_ids:
        for message in generator.session(cid):
            replay.send(message)
    replay.drain()
    return replay


@pytest.mark.parametrize("edit", ["rules", "personas", "lifecycle"])
def test_reevaluate_writes_exactly_the_customers_a_full_rescore_moves(edit) -> None:
    """The bench's edit of the rules; with it, the personas' prototypes rotated (so customers
    change persona), or a shorter lifecycle and no lifecycle rule (only the record's stage
    moves, as when due customers wait for a later step)."""
    import copy

    from models.facts import LifecyclePolicy
    from models.personas import Persona, PersonaCatalog
    from stream.catalog import load_personas, load_segments
    from stream.tools.bench_definitions import changed_segments

    replay = _generated_state()
    rules = load_segments(text=changed_segments(), source="changed.yaml")
    personas = load_personas()
    lifecycle = replay.step.catalog.lifecycle
    if edit == "personas":
        old = personas.personas
        personas = PersonaCatalog(
            [
                Persona(p.name, p.description, dict(old[(i + 1) % len(old)].prototype))
                for i, p in enumerate(old)
            ]
        )
    elif edit == "lifecycle":  # and no rule on it: only the record's stage moves
        lifecycle = LifecyclePolicy(new_days=1.0, at_risk_days=2.0, lapsed_days=3.0)
        rules = [r for r in rules if r.kind != "lifecycle"]
    catalog = replace(
        replay.step.catalog, rules=tuple(rules), personas=personas, lifecycle=lifecycle, version=7
    )
    step = replay.step
    if edit == "lifecycle":  # no lifecycle rule before either
        old_rules = tuple(r for r in step.catalog.rules if r.kind != "lifecycle")
        step.use_catalog(replace(step.catalog, rules=old_rules))
    # Everyone scored by the final model first: a full rescore would move clusters (and, with
    # the model's hysteresis, personas) of customers last scored by an earlier model.
    known = DueSchedule()  # due times as the earlier catalog left them
    step.rescore(list(replay.profiles), replay.profiles, replay.model, replay.watermark, known, 0)
    before = step.catalog
    step.use_catalog(catalog)
    ids = sorted(replay.profiles)
    args = (replay.model, replay.watermark)
    full = step.rescore(
        ids,
        copy.deepcopy(replay.profiles),
        *args,
        DueSchedule(),
        0,
        rewrite=True,
        trigger="definitions",
    )
    # The customers as last evaluated: under ``before``, which the step scored with, so a
    # rules edit evaluates only the edited rules of those not due; the same customers under
    # definitions the step does not know (the full way); and every third customer due.
    assert all(p.evaluated_under == before.fingerprint for p in replay.profiles.values() if p)
    assert (catalog.edits_since(before) is not None) == (edit == "rules")
    unknown = copy.deepcopy(replay.profiles)
    for profile in unknown.values():
        if profile is not None:
            profile.evaluated_under = None
    due = copy.deepcopy(known)
    for customer_id in ids[::3]:
        due.set(customer_id, replay.watermark)
    runs = [
        step.reevaluate(ids, copy.deepcopy(replay.profiles), *args, copy.deepcopy(known), 0),
        step.reevaluate(ids, unknown, *args, copy.deepcopy(known), 0),
        step.reevaluate(ids, copy.deepcopy(replay.profiles), *args, due, 0),
    ]
    moved = sorted(full.states)  # rescore saves exactly those whose segments or stage moved
    assert 0 < len(moved) <= len(ids)
    assert edit == "lifecycle" or len(moved) < len(ids), "the edit moves some, not others"
    kinds = {c.segment.split(":")[0] for c in full.changes}
    assert kinds == {"rule", "persona"} if edit == "personas" else kinds == {"rule"}
    if edit == "lifecycle":
        assert set(moved) - {c.customer_id for c in full.changes}, "stages alone moved some"
    by_id = {w.customer_id: w for w in full.writes}
    for fast in runs:
        assert sorted(w.customer_id for w in fast.writes) == moved == sorted(fast.states)
        assert [c.to_dict() for c in fast.changes] == [c.to_dict() for c in full.changes]
        for write in fast.writes:
            assert write.record == by_id[write.customer_id].record
            assert write.record["definitions_version"] == 7
        assert fast.due == full.due  # every customer's due time, for the new rules' thresholds


def test_facts_of_the_dynamic_families_are_computed_for_the_rules_that_read_them_alone() -> None:
    from models.facts import customer_facts
    from models.rules import RuleSegment
    from stream.catalog import load_segments

    replay = _generated_state(200)
    extra = [
        RuleSegment.compile("b", "custom", "", {f: {"gte": 0.2}})
        for f in ("category_share.electronics", "spend_share.fashion", "daypart_share.evening")
    ] + [RuleSegment.compile("t", "custom", "", {"traits.country": {"exists": True}})]
    catalog = SegmentCatalog(rules=(*load_segments(), *extra))
    assert catalog.dynamic_facts is not None and "device_share.mobile" in catalog.dynamic_facts
    assert "category_share.books" not in catalog.dynamic_facts
    matched = 0
    for profile in replay.profiles.values():
        at = profile.last_seen_ts or 0
        every = customer_facts(profile, at)
        some = customer_facts(profile, at, dynamic=catalog.dynamic_facts)
        assert set(some) <= set(every) and all(every[k] == v for k, v in some.items())
        assert catalog.evaluate(some) == catalog.evaluate(every)
        matched += len(catalog.evaluate(some))
    assert matched > 0
    bare = SegmentCatalog(rules=(RuleSegment("x", "custom", "", lambda f: True),))
    assert bare.dynamic_facts is None  # a bare predicate may read any fact: all computed


def test_each_fact_asked_for_alone_is_the_one_every_fact_holds() -> None:
    """``customer_facts(only=...)`` (a definitions backfill) computes a fact as the full call."""
    from models.facts import STATIC_FACTS, customer_facts

    replay = _generated_state(200)
    names = sorted(STATIC_FACTS - {"cluster", "persona"})
    dynamic = 0
    for profile in replay.profiles.values():
        at, watermark = (profile.last_seen_ts or 0) + 3_600_000, replay.watermark
        every = customer_facts(profile, at, watermark=watermark)
        wanted = [*names, *(k for k in every if "." in k and not k.startswith("session."))]
        dynamic += len(wanted) - len(names)
        for name in wanted:
            assert (
                customer_facts(profile, at, watermark=watermark, only={name})[name] == every[name]
            ), name
        some = customer_facts(profile, at, watermark=watermark, only=set(wanted))
        assert {k: some[k] for k in wanted} == {k: every[k] for k in wanted}
    assert dynamic > 0


def test_customers_seen_on_too_few_sessions_are_scored_but_not_learned_from() -> None:
    policy = SamplingPolicy(every=1, min_events=1, max_per_second=0, min_sessions=2)
    h = Harness(SegmentStep(SegmentCatalog(), policy))
    first = h.run(click("a", 1, offset=0), click("a", 2, T0 + 60_000, offset=1))
    assert first.samples == [] and "a" in h.profiles  # one session: kept, not sampled
    second = h.run(click("a", 3, T0 + 2 * 3_600_000, offset=2, session="s2"))
    assert len(second.samples) == 1  # the second session makes it evidence
    # A feed without session ids has no sessions to count: it is sampled as before.
    assert len(h.run(purchase("b", 4, offset=3)).samples) == 1
