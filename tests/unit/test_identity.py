"""Identity stitching through the pure step (models.identity), with the identity topic played
by a queue: every message a step forwards is fed back as the next batch, as the topic would
deliver it. The two-worker run on the real broker is tests/integration/test_identity.py."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import pytest

from models.features import CANONICAL_FEATURES, CustomerProfile
from models.identity import IDENTITY, absorb
from models.rules import RuleSegment
from models.schedule import DueSchedule
from models.segments import SegmentCatalog
from models.step import SegmentStep, SourceMessage, StepOutcome

T0 = 1_790_000_000_000
MIN = 60_000


class Mesh:
    """Input topics and the identity topic in front of one step; what a worker would save."""

    def __init__(self, catalog: SegmentCatalog | None = None) -> None:
        self.step = SegmentStep(catalog or SegmentCatalog())
        self.profiles: dict[str, CustomerProfile | None] = {}
        self.schedule = DueSchedule()
        self.watermark = 0
        self.offsets: Counter[str] = Counter()
        self.queue: list[SourceMessage] = []
        self.aliases: dict[str, str] = {}
        self.outcomes: list[StepOutcome] = []

    def send(self, source: str, key: str | bytes, value: Any) -> None:
        log = f"{source}/0"
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        raw_key = key if isinstance(key, bytes) else key.encode()
        self.queue.append(SourceMessage(source, log, self.offsets[log], raw_key, body))
        self.offsets[log] += 1

    def click(self, customer: str, event_id: str, ts: int, **extra: Any) -> None:
        event = {"event_id": event_id, "type": "page_view", "customer_id": customer, "ts": ts}
        self.send("clickstream", customer, {**event, **extra})

    def buy(self, customer: str, event_id: str, ts: int, amount: float) -> None:
        event = {"event_id": event_id, "customer_id": customer, "ts": ts, "amount": amount}
        self.send("purchases", customer, event)

    def identify(self, customer: str, event_id: str, ts: int, **ids: str) -> None:
        self.send(
            "identify", customer, {"event_id": event_id, "customer_id": customer, "ts": ts, **ids}
        )

    def batch(self, save: bool = True) -> StepOutcome:
        """Run the queue as one batch; ``save=False``: the worker dies after publishing, before
        its table write, and restarts from the states saved before the batch."""
        batch, self.queue = self.queue, []
        saved = {
            c: None if p is None else CustomerProfile.from_state(p.to_state())
            for c, p in self.profiles.items()
        }
        out = self.step.run(batch, self.profiles, None, self.watermark, self.schedule, 0, 0.0)
        for key, value in out.forwards:  # published before the state is saved
            self.send(IDENTITY, key, value)
        if save:
            self.profiles.update(out.states)
            self.aliases.update(out.aliases)
            self.watermark = out.watermark
            self.outcomes.append(out)
        else:  # the step changed the live profiles in place: back to the saved states
            self.profiles = saved
        return out

    def settle(self) -> None:
        for _ in range(20):
            if not self.queue:
                return
            self.batch()
        raise AssertionError("the identity messages did not settle")

    def profile(self, customer: str) -> CustomerProfile:
        found = self.profiles.get(customer)
        assert found is not None, customer
        return found

    def canonical(self, customer: str) -> dict[str, Any]:
        return self.profile(customer).value_features()

    def changes(self, customer: str) -> list[tuple[str, str]]:
        return [
            (c.segment, c.change)
            for out in self.outcomes
            for c in out.changes
            if c.customer_id == customer
        ]

    def dead(self) -> list[str]:
        return [d.reason for out in self.outcomes for d in out.dead]


def union_features(*logs: list[tuple[str, int, float | None]]) -> dict[str, Any]:
    """Canonical features of the union of event logs (event id, ts, amount or None)."""
    seen: dict[str, tuple[int, float | None]] = {}
    for log in logs:
        for event_id, ts, amount in log:
            seen[event_id] = (ts, amount)
    purchases = [(ts, a) for ts, a in seen.values() if a is not None]
    times = [ts for ts, _ in seen.values()]
    return {
        "orders_total": len(purchases),
        "revenue_total": sum(a for _, a in purchases),
        "first_seen_ts": min(times),
        "last_seen_ts": max(times),
        "last_purchase_ts": max((ts for ts, _ in purchases), default=None),
    }


def browse_then_login(mesh: Mesh) -> None:
    mesh.click("anon-1", "a1", T0)
    mesh.buy("anon-1", "a2", T0 + MIN, 30.0)
    mesh.click("anon-1", "a3", T0 + 2 * MIN)
    mesh.buy("u-1", "b1", T0 - 100 * MIN, 12.5)
    mesh.batch()
    mesh.identify("u-1", "b2", T0 + 3 * MIN, anonymous_id="anon-1")


def test_an_identify_with_an_anonymous_id_merges_that_history_into_the_customer() -> None:
    mesh = Mesh()
    browse_then_login(mesh)
    mesh.settle()
    expected = union_features(
        [("a1", T0, None), ("a2", T0 + MIN, 30.0), ("a3", T0 + 2 * MIN, None)],
        [("b1", T0 - 100 * MIN, 12.5), ("b2", T0 + 3 * MIN, None)],
    )
    assert mesh.canonical("u-1") == expected
    assert mesh.profile("u-1").merged_ids == ["anon-1"]
    assert mesh.profile("u-1").counts["page_view"] == 2
    assert mesh.profile("anon-1").merged_into == "u-1"
    assert mesh.aliases == {"anon-1": "u-1"}


def test_the_merged_id_exits_every_segment_and_the_customer_enters_by_the_merged_history() -> None:
    buyers = RuleSegment.compile("buyers", "behavioral", "", {"orders_total": {"gte": 2}})
    mesh = Mesh(SegmentCatalog(rules=(buyers,)))
    browse_then_login(mesh)
    mesh.settle()
    assert mesh.changes("anon-1") == []  # one purchase alone: never in the segment
    assert ("rule:buyers", "entered") in mesh.changes("u-1")
    mesh2 = Mesh(SegmentCatalog(rules=(buyers,)))
    mesh2.buy("anon-1", "a1", T0, 1.0)
    mesh2.buy("anon-1", "a2", T0 + MIN, 1.0)
    mesh2.settle()
    assert mesh2.changes("anon-1") == [("rule:buyers", "entered")]
    mesh2.identify("u-1", "i1", T0 + 2 * MIN, anonymous_id="anon-1")
    mesh2.settle()
    assert mesh2.changes("anon-1") == [("rule:buyers", "entered"), ("rule:buyers", "exited")]
    exit_ = [c for out in mesh2.outcomes for c in out.changes if c.change == "exited"][0]
    assert exit_.reason == "merged into u-1"
    assert mesh2.changes("u-1") == [("rule:buyers", "entered")]


def test_events_that_still_carry_the_anonymous_id_go_to_the_known_customer() -> None:
    mesh = Mesh()
    browse_then_login(mesh)
    mesh.settle()
    mesh.buy("anon-1", "a4", T0 + 10 * MIN, 7.0)
    mesh.click("anon-1", "a5", T0 + 11 * MIN)
    mesh.settle()
    assert mesh.canonical("u-1")["orders_total"] == 3
    assert mesh.canonical("u-1")["revenue_total"] == pytest.approx(49.5)
    assert mesh.canonical("u-1")["last_seen_ts"] == T0 + 11 * MIN
    assert mesh.profile("anon-1").orders_total == 0  # a redirect holds no history
    assert sum(out.counters.get("forwarded", 0) for out in mesh.outcomes) == 2


def test_an_event_sent_under_both_ids_counts_once() -> None:
    mesh = Mesh()
    mesh.buy("anon-1", "p1", T0, 20.0)
    mesh.buy("u-1", "p1", T0, 20.0)  # the same order, sent again under the user id
    mesh.buy("u-1", "p2", T0 + MIN, 5.0)
    mesh.batch()
    mesh.identify("u-1", "i1", T0 + 2 * MIN, anonymous_id="anon-1")
    mesh.settle()
    assert mesh.canonical("u-1")["orders_total"] == 2
    assert mesh.canonical("u-1")["revenue_total"] == pytest.approx(25.0)
    mesh.buy("anon-1", "p1", T0, 20.0)  # and once more, late, under the merged id
    mesh.settle()
    assert mesh.canonical("u-1")["orders_total"] == 2


def test_redelivery_of_any_message_of_the_merge_changes_nothing() -> None:
    """A crash before a step's state is saved redelivers its messages; what it published is
    out already. Each step of the merge is run twice this way, then once more for real."""
    mesh = Mesh()
    browse_then_login(mesh)
    for _ in range(3):  # the identify, the merge request, the state
        pending = list(mesh.queue)
        mesh.batch(save=False)  # published, then the worker dies before its changelog write
        mesh.queue = pending + mesh.queue  # the input redelivered, after the published ones
        mesh.batch()
    mesh.settle()
    once = Mesh()
    browse_then_login(once)
    once.settle()
    assert mesh.canonical("u-1") == once.canonical("u-1")
    assert mesh.profile("u-1").applied == once.profile("u-1").applied
    assert mesh.profile("u-1").merged_ids == ["anon-1"]


@pytest.mark.parametrize(
    "order", list(itertools.permutations(("published", "late", "input"))), ids="-".join
)
@pytest.mark.parametrize("asked_twice", [False, True])
def test_a_merge_redone_after_a_crash_loses_no_event_whatever_the_order_of_redelivery(
    order: tuple[str, ...], asked_twice: bool
) -> None:
    """The merged id's worker handles the merge request, publishes, and dies before saving
    (SIGKILL). Its new owner reads the id's messages again from the committed offsets, and
    messages of different topics may come in another interleaving than the first time: an
    event sent under the id after the merge can come before the merge request. The customer
    gets that event exactly once in every order (it was lost when the state went out at the
    cut: the repeated cut then held the event, and the customer had absorbed the first)."""
    mesh = Mesh()
    browse_then_login(mesh)
    mesh.batch()  # the customer's worker: the identify, the merge request out
    if asked_twice:  # the customer's worker asked twice (its own redelivery)
        mesh.queue = mesh.queue * 2
    redelivered = list(mesh.queue)
    mesh.batch(save=False)  # the merged id's worker: published, then killed
    groups = {"published": list(mesh.queue), "input": redelivered}
    mesh.queue = []
    mesh.buy("anon-1", "late", T0 + 10 * MIN, 5.0)  # sent under the anonymous id after login
    groups["late"] = list(mesh.queue)
    mesh.queue = [m for name in order for m in groups[name]]
    mesh.settle()
    expected = union_features(
        [("a1", T0, None), ("a2", T0 + MIN, 30.0), ("a3", T0 + 2 * MIN, None)],
        [("b1", T0 - 100 * MIN, 12.5), ("b2", T0 + 3 * MIN, None)],
        [("late", T0 + 10 * MIN, 5.0)],
    )
    assert mesh.canonical("u-1") == expected
    assert mesh.profile("u-1").merged_ids == ["anon-1"]
    assert mesh.profile("anon-1").merged_into == "u-1" and mesh.profile("anon-1").applied == 0
    assert mesh.aliases == {"anon-1": "u-1"}


def test_a_merge_sends_the_history_only_once_its_cut_is_saved() -> None:
    """The state goes out from a saved cut: a repeated request in the batch that cut the id
    sends nothing; the request the cut sent to the id itself sends the state, once."""
    mesh = Mesh()
    browse_then_login(mesh)
    mesh.batch()
    mesh.queue = mesh.queue * 2  # asked twice, in one batch
    cut = mesh.batch()
    assert [json.loads(v)["op"] for _, v in cut.forwards] == ["merge"]
    assert mesh.profile("anon-1").merged_into == "u-1" and mesh.profile("anon-1").applied == 3
    sent = mesh.batch()
    assert [json.loads(v)["op"] for _, v in sent.forwards] == ["state"]
    assert mesh.profile("anon-1").applied == 0  # a bare redirect now
    mesh.settle()
    assert mesh.canonical("u-1")["orders_total"] == 2


def test_a_chain_of_merges_ends_at_the_last_customer_and_every_alias_points_there() -> None:
    mesh = Mesh()
    browse_then_login(mesh)
    mesh.settle()
    mesh.buy("u-2", "c1", T0 + 20 * MIN, 100.0)
    mesh.send(
        "identify",
        "u-2",
        {
            "type": "alias",
            "messageId": "al-1",
            "userId": "u-2",
            "previousId": "u-1",
            "timestamp": "2026-09-21T14:00:00Z",
        },
    )
    mesh.settle()
    assert mesh.aliases == {"anon-1": "u-2", "u-1": "u-2"}
    assert mesh.canonical("u-2")["orders_total"] == 3
    assert mesh.canonical("u-2")["revenue_total"] == pytest.approx(142.5)
    assert mesh.profile("u-2").merged_ids == ["u-1", "anon-1"]
    mesh.buy("anon-1", "late", T0 + 30 * MIN, 1.0)  # two hops of redirects
    mesh.settle()
    assert mesh.canonical("u-2")["orders_total"] == 4


def test_an_id_joins_the_first_customer_that_claims_it() -> None:
    mesh = Mesh()
    browse_then_login(mesh)
    mesh.settle()
    mesh.identify("u-9", "x1", T0 + 5 * MIN, anonymous_id="anon-1")
    mesh.settle()
    reasons = mesh.dead()
    assert any("'anon-1' is already merged into 'u-1'" in r for r in reasons), reasons
    assert mesh.canonical("u-9")["orders_total"] == 0
    assert mesh.canonical("u-1")["orders_total"] == 2
    assert mesh.profile("anon-1").merged_into == "u-1"


def test_a_cycle_is_a_dead_letter() -> None:
    mesh = Mesh()
    browse_then_login(mesh)
    mesh.settle()
    # u-1 already holds anon-1; merging u-1 into anon-1 would loop
    mesh.send(IDENTITY, "u-1", {"op": "merge", "from": "u-1", "into": "anon-1", "ts": T0})
    mesh.settle()
    assert any("would make a cycle" in r for r in mesh.dead()), mesh.dead()
    assert mesh.profile("u-1").merged_into is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not JSON"),
        ({"op": "split", "from": "a", "into": "b"}, "unknown op"),
        ({"op": "merge", "from": "a", "into": "a", "ts": 0}, "into itself"),
        ({"op": "merge", "from": "x", "into": "b", "ts": 0}, "must be keyed by 'x'"),
        ({"op": "state", "from": "x", "into": "a", "ts": 0, "state": {"v": 1}}, "not a profile"),
    ],
)
def test_a_malformed_identity_message_is_a_dead_letter(value: Any, reason: str) -> None:
    mesh = Mesh()
    mesh.send(IDENTITY, "a", value)
    out = mesh.batch()
    assert len(out.dead) == 1 and reason in out.dead[0].reason, out.dead


def test_absorb_numbers_the_later_ids_visits_after_the_others_and_counts_a_shared_one_once() -> (
    None
):
    from models.events import Event

    def clicks(p: CustomerProfile, sids: list[str], start: int, cart: bool = False) -> None:
        for i, sid in enumerate(sids):
            ts = T0 + (start + i) * 60 * MIN
            p.apply(Event(f"{p.customer_id}{sid}", p.customer_id, "page_view", ts, session_id=sid))
            if cart:
                p.apply(
                    Event(
                        f"{p.customer_id}{sid}c",
                        p.customer_id,
                        "add_to_cart",
                        ts + 1,
                        session_id=sid,
                        price=1.0,
                    )
                )

    anon, known = CustomerProfile("anon"), CustomerProfile("known")
    clicks(anon, ["a1", "a2", "shared"], 0, cart=True)
    clicks(known, ["shared", "k1", "k2"], 2, cart=True)  # seen last: its visits come after
    absorb(known, anon)
    # six ids, one visit under both: five sessions, five cart sessions; the newest four kept,
    # the later id's numbered after the earlier id's three
    assert (known.sessions, known.cart_sessions) == (5, 5)
    assert known.visits == {"a2": [2, 1], "shared": [4, 1], "k1": [5, 1], "k2": [6, 1]}


def test_absorb_combines_decayed_sums_in_event_time_and_traits_newest_wins() -> None:
    from models.events import Event

    a, b = CustomerProfile("a"), CustomerProfile("b")
    a.apply(Event("1", "a", "purchase", T0, amount=10.0))
    a.apply(Event("2", "a", "identify", T0 + 2 * MIN, traits={"plan": "pro", "age": 30}))
    b.apply(Event("3", "b", "purchase", T0 + 30 * 86_400_000, amount=10.0))
    b.apply(Event("4", "b", "identify", T0 + MIN, traits={"plan": "free"}))
    both = CustomerProfile("both")
    for e in (
        Event("1", "both", "purchase", T0, amount=10.0),
        Event("3", "both", "purchase", T0 + 30 * 86_400_000, amount=10.0),
    ):
        both.apply(e)
    absorb(b, a)
    at = T0 + 30 * 86_400_000
    assert b.monetary_decayed.value_at(at) == pytest.approx(both.monetary_decayed.value_at(at))
    assert b.order_value.get() == pytest.approx(10.0)
    assert b.traits == {"plan": "pro", "age": 30}
    assert {k: getattr(b, k) for k in CANONICAL_FEATURES} == {
        "orders_total": 2,
        "revenue_total": 20.0,
        "first_seen_ts": T0,
        "last_seen_ts": T0 + 30 * 86_400_000,
        "last_purchase_ts": T0 + 30 * 86_400_000,
    }


def test_a_state_of_the_previous_version_still_loads() -> None:
    state = CustomerProfile("c", orders_total=2).to_state()
    for key in ("pa", "mid", "ask", "into"):
        del state[key]
    state["v"] = 2
    state["s"] = [0, 0, None, False]
    profile = CustomerProfile.from_state(state)
    assert profile.orders_total == 2 and profile.merged_ids == [] and profile.merged_into is None


def test_erasing_a_customer_erases_the_ids_merged_into_them() -> None:
    mesh = Mesh()
    browse_then_login(mesh)
    mesh.settle()
    mesh.send("forget", "u-1", b"")
    mesh.settle()
    erased = [c for out in mesh.outcomes for c in out.erased]
    assert erased == ["u-1", "anon-1"]
    assert mesh.profiles["u-1"] is None and mesh.profiles["anon-1"] is None
    mesh.click("anon-1", "after", T0 + 99 * MIN)  # a new visitor under that id: a new profile
    mesh.settle()
    assert mesh.profile("anon-1").merged_into is None and mesh.profile("anon-1").applied == 1


def test_a_merge_into_a_customer_with_a_long_history_is_exact() -> None:
    mesh = Mesh()
    for k in range(300):  # far more than the event-id windows hold
        mesh.buy("u-1", f"old-{k}", T0 - 300 * 86_400_000 + k * 86_400_000, 2.0)
        mesh.click("u-1", f"oldc-{k}", T0 - 300 * 86_400_000 + k * 86_400_000 + 1)
    for k in range(100):
        mesh.buy("anon-1", f"an-{k}", T0 + k * MIN, 1.0)
    mesh.batch()
    mesh.identify("u-1", "login", T0 + 200 * MIN, anonymous_id="anon-1")
    mesh.settle()
    assert mesh.canonical("u-1") == {
        "orders_total": 400,
        "revenue_total": pytest.approx(700.0),
        "first_seen_ts": T0 - 300 * 86_400_000,
        "last_seen_ts": T0 + 200 * MIN,
        "last_purchase_ts": T0 + 99 * MIN,
    }
    for k in range(90, 100):  # the anonymous id's newest events, sent again: counted once
        mesh.buy("anon-1", f"an-{k}", T0 + k * MIN, 1.0)
    mesh.settle()
    assert mesh.canonical("u-1")["orders_total"] == 400


def test_a_merge_puts_the_id_seen_last_at_the_newest_visits_of_the_recent_mix() -> None:
    from models.events import Event
    from models.features import CATEGORY_SHARE, RECENT_HALF_VISITS, feature_vector

    def browse(p: CustomerProfile, categories: list[str], start: int) -> None:
        for i, category in enumerate(categories):  # one visit each, a day apart
            event_id, visit = f"{p.customer_id}{i}", f"{p.customer_id}-s{i}"
            ts = T0 + (start + i) * 86_400_000
            p.apply(Event(event_id, p.customer_id, "product_view", ts, visit, category=category))

    w = [2.0 ** (n / RECENT_HALF_VISITS) for n in range(1, 6)]  # the merged visits 1..5
    for anonymous_last in (True, False):
        known, anonymous = CustomerProfile("k"), CustomerProfile("a")
        browse(known, ["shoes"] * 4, start=0)
        browse(anonymous, ["bags"], start=10 if anonymous_last else -10)
        known.rescale_recent(1)  # the sides on different shifts: the shares do not change
        absorb(known, anonymous)
        bags = w[4] if anonymous_last else w[0]  # the newest visit, else the first
        share = feature_vector(known)[CATEGORY_SHARE + "bags"]
        assert share == pytest.approx(bags / sum(w))
        # kept on the shift that puts the merged customer's newest visit between 1 and 2
        assert known.recent_visits == 5
        assert 1.0 <= 2.0 ** (known.recent_visits / RECENT_HALF_VISITS - known.recent_shift) < 2.0
    # the next visit weighs more than the merged newest (the known id's last) by one step
    shoes = known.recent_categories["shoes"]
    known.apply(Event("n", "k", "product_view", T0 + 20 * 86_400_000, "new", category="hats"))
    newest = shoes / sum(2.0 ** (n / RECENT_HALF_VISITS) for n in range(2, 6)) * w[4]
    assert known.recent_categories["hats"] == pytest.approx(
        2.0 ** (1 / RECENT_HALF_VISITS) * newest
    )
