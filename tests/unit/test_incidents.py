"""Generator incidents, and one end-to-end check: a visitor spike replayed through the worker's
step (``stream.tools.evaluate.Replay``) is alerted by the flow monitor the trainer runs."""

from __future__ import annotations

import pytest

from stream.settings import Settings
from stream.tools.eval_incidents import Scenario, replay_flows
from stream.tools.generator import Message, TrafficGenerator
from stream.tools.incidents import DAY_MS, Incident, IncidentTraffic, SteadyPopulation
from stream.worker.trainer import flow_monitor


def _events(messages):  # type: ignore[no-untyped-def]
    for m in messages:
        yield from (m.value if isinstance(m.value, list) else [m.value])


def test_a_checkout_loop_sends_mobile_users_back_to_the_cart_and_nobody_buys() -> None:
    g = TrafficGenerator(customers=200, seed=4, session_gap_ms=DAY_MS // 300)
    loop = Incident("checkout_loop", g.clock - DAY_MS, g.clock + 30 * DAY_MS, device="mobile")
    traffic = IncidentTraffic(g, [loop], seed=2)
    sessions = [traffic.session() for _ in range(600)]
    mobile = [s for s in sessions if any(e.get("device") == "mobile" for e in _events(s))]
    looped = [s for s in mobile if sum(e.get("page") == "/cart" for e in _events(s)) >= 2]
    assert looped and traffic.affected["checkout_loop"] == len(looped)
    assert not any(m.source == "purchases" for s in mobile for m in s)
    for s in looped:
        events = sorted(_events(s), key=lambda e: e["ts"])
        assert events[-1]["type"] == "checkout_start"  # ends at the checkout, no purchase
        assert len({e["event_id"] for e in events}) == len(events)
    # other devices still buy
    assert any(m.source == "purchases" for s in sessions for m in s)


def test_a_visitor_spike_adds_new_anonymous_visitors_who_never_buy() -> None:
    g = TrafficGenerator(customers=100, seed=5, session_gap_ms=DAY_MS // 200)
    spike = Incident("visitor_spike", g.clock - DAY_MS, g.clock + 30 * DAY_MS, share=1.5)
    traffic = IncidentTraffic(g, [spike], seed=3)
    messages = [m for _ in range(400) for m in traffic.session()]
    visitors = {m.key for m in messages if m.key.startswith("visitor-")}
    assert 500 <= len(visitors) <= 700  # 1.5 a session
    theirs = [e for m in messages if m.key in visitors for e in _events([m])]
    assert theirs and {m.source for m in messages if m.key in visitors} == {"clickstream"}
    assert not {"add_to_cart", "checkout_start", "purchase"} & {e["type"] for e in theirs}


def test_the_stream_outside_an_incident_is_the_same_with_and_without_it() -> None:
    def stream(incidents: list[Incident]) -> list[str]:
        g = TrafficGenerator(customers=300, seed=9, session_gap_ms=DAY_MS // 100)
        traffic = IncidentTraffic(g, incidents, seed=1)
        return [e["event_id"] for _ in range(150) for e in _events(traffic.session())]

    g = TrafficGenerator(customers=300, seed=9, session_gap_ms=DAY_MS // 100)
    later = Incident("payment_outage", g.clock + 10 * DAY_MS, g.clock + 20 * DAY_MS)
    assert stream([]) == stream([later])


def test_failing_checkouts_drop_that_share_of_purchases_with_incidents_or_without() -> None:
    def stream(incidents: list[Incident], failing: float) -> tuple[list[Message], int]:
        g = TrafficGenerator(customers=300, seed=9, session_gap_ms=DAY_MS // 100)
        traffic = IncidentTraffic(g, incidents, seed=1, failing_checkouts=failing)
        return [m for _ in range(3000) for m in traffic.session()], traffic.failed_checkouts

    def ids(messages: list[Message]) -> list[str]:
        return [e["event_id"] for e in _events(messages)]

    everything, _ = stream([], 0.0)
    kept, failed = stream([], 0.3)
    bought = sum(m.source == "purchases" for m in everything)
    assert 0.25 < failed / bought < 0.35, (failed, bought)
    # only purchases go, their sessions' clicks (cart, checkout) stay
    dropped = set(ids(everything)) - set(ids(kept))
    assert set(ids(kept)) <= set(ids(everything)) and len(dropped) == failed
    purchase_ids = {
        e["event_id"] for m in everything if m.source == "purchases" for e in _events([m])
    }
    assert dropped <= purchase_ids
    # the baseline draws apart from the incidents: outside an incident, the same stream
    g = TrafficGenerator(customers=300, seed=9, session_gap_ms=DAY_MS // 100)
    outage = Incident("payment_outage", g.clock + 5 * DAY_MS, g.clock + 10 * DAY_MS, share=0.9)
    with_outage = stream([outage], 0.3)[0]

    def outside(messages: list[Message]) -> list[str]:
        lo, hi = outage.start_ms - 2 * DAY_MS, outage.end_ms + 2 * DAY_MS
        return [e["event_id"] for e in _events(messages) if not lo <= e["ts"] < hi]

    assert outside(with_outage) == outside(kept) and ids(with_outage) != ids(kept)

    # during the outage, a mobile purchase goes with either: 0.3 + 0.7 * 0.9 of them
    def mobile(messages: list[Message]) -> int:
        return sum(
            m.source == "purchases"
            and m.value["device"] == "mobile"
            and outage.covers(m.value["ts"])
            for m in messages
        )

    assert 0.85 < 1 - mobile(with_outage) / mobile(everything) < 1.0
    assert max(e["ts"] for e in _events(kept)) > outage.end_ms + 10 * DAY_MS


def test_a_steady_population_renews_itself() -> None:
    g = TrafficGenerator(customers=3000, seed=1, session_gap_ms=DAY_MS // 100)
    population = SteadyPopulation(g, arrivals_per_day=10, lifetime_days=20, seed=1)
    first = {population.pick() for _ in range(300) if g.session(population.pick())}
    later = {population.pick() for _ in range(3000) if g.session(population.pick())}
    assert 150 <= len(population._active) <= 260  # about 10 a day for 20 days
    assert len(later - first) > 100


def test_bad_incidents_and_scenarios_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown incident"):
        Incident("meteor", 0, 1)
    with pytest.raises(ValueError, match="end after"):
        Incident("payment_outage", 5, 5)
    with pytest.raises(ValueError, match="at most 1"):
        Incident("payment_outage", 0, 1, share=2.0)
    with pytest.raises(ValueError, match="between the first baseline"):
        Scenario(days=100)
    with pytest.raises(ValueError, match="burn_in_days"):
        Scenario(burn_in_days=200)
    with pytest.raises(ValueError, match="failing_checkouts"):
        Scenario(failing_checkouts=1.0)
    with pytest.raises(ValueError, match=r"payment_outage: share must be positive \(at most 1"):
        Scenario(incidents=(("payment_outage", 20.0, 5.0, 1.5),))
    with pytest.raises(ValueError, match="drain_every"):
        Scenario(drain_every=-1)
    with pytest.raises(ValueError, match="failing_checkouts"):
        IncidentTraffic(TrafficGenerator(customers=10, seed=1), failing_checkouts=-0.1)


@pytest.mark.slow
def test_a_visitor_spike_through_the_workers_step_is_alerted_within_a_day() -> None:
    """Twenty days of a small shop, new visitors tripling on day 15: the lifecycle_new
    entries alert, dated and raised within a day of the start."""
    g = TrafficGenerator(customers=6000, seed=3, session_gap_ms=DAY_MS // 600)
    start = g.clock
    population = SteadyPopulation(g, arrivals_per_day=40, lifetime_days=60, seed=3)
    spike_at = start + int(15.4 * DAY_MS)
    spike = Incident("visitor_spike", spike_at, spike_at + 3 * DAY_MS, share=1.0)
    traffic = IncidentTraffic(g, [spike], seed=4, pick=population.pick)
    settings = Settings()
    alerts, events = replay_flows(settings, traffic, start + 19 * DAY_MS, flow_monitor(settings))
    assert events > 100_000
    hits = [
        a
        for a in alerts
        if spike_at <= a.detected_at <= spike_at + DAY_MS and abs(a.since - spike_at) <= DAY_MS
    ]
    assert ("rule:lifecycle_new", "entered") in {(a.segment, a.flow) for a in hits}, [
        a.message for a in alerts if a.detected_at > start + 14 * DAY_MS
    ]


def test_the_report_gives_median_and_worst_and_judges_every_target() -> None:
    from models.drift import DriftAlert
    from stream.tools.eval_incidents import IncidentRun, report_rows

    hour = 3_600_000

    def alert(since: int, detected: int) -> DriftAlert:
        return DriftAlert(
            "segment_flow", "rule:x entered", 3.0, 1.0, 3.0, since, detected, 30, None
        )

    def run(seed: int, found: bool, quiet: int) -> IncidentRun:
        start = 100 * DAY_MS
        return IncidentRun(
            seed=seed,
            events=1,
            stationary_events=1,
            detected={"visitor_spike": alert(start, start + 5 * hour * seed) if found else None},
            starts={"visitor_spike": start},
            stationary_alerts=[alert(0, 0)] * quiet,
            measured_months=1.5,
        )

    rows = {r[0]: r for r in report_rows([run(1, True, 0), run(2, True, 1), run(3, True, 3)])}
    assert rows["visitor_spike: alerted within a day of its start, dated within a day"][1:] == (
        "3 of 3 seeds",
        "every seed",
        True,
    )
    assert (
        rows["visitor_spike: hours to the alert / dating error"][1] == "10 / 0 h (worst 15 / 0 h)"
    )
    quiet = rows["flow alerts a month on a stationary stream"]
    assert quiet[1] == "median 0.67, worst 2.00" and quiet[3] is False
    missed = report_rows([run(1, False, 0)])
    assert missed[0][1] == "0 of 1 seeds" and missed[0][3] is False
    assert missed[1][0].startswith("visitor_spike: alerted at all") and missed[1][1] == (
        "0 of 1 seeds; stationary stream in that window: 0 of 1"
    )
    assert not any("alerted at all" in r for r in rows)  # every seed within a day: no row
    # a faint fault: one seed within a day, two after two and four days (dated a day after
    # its start), and one of the three stationary streams alerting in that window too
    runs = [run(1, True, 0), run(2, False, 0), run(3, False, 0)]
    for r, days in zip(runs[1:], (2, 4), strict=True):
        start = r.starts["visitor_spike"]
        r.dated["visitor_spike"] = alert(start + DAY_MS, start + days * DAY_MS)
    runs[0].dated["visitor_spike"] = runs[0].detected["visitor_spike"]
    runs[2].dated_quiet["visitor_spike"] = alert(0, 0)
    row = {r[0]: r for r in report_rows(runs)}[
        "visitor_spike: alerted at all, however late (by a day after its end)"
    ]
    assert row[1:] == (
        "3 of 3 seeds, after 48 h (worst 96 h), dated +24 h; stationary stream in that "
        "window: 1 of 3",
        "(reported)",
        True,
    )


def test_streams_in_processes_of_their_own_give_the_same_runs() -> None:
    """``eval-incidents --jobs 2`` runs each seed's two streams in processes of their own
    (a stream of the full scenario takes a minute or two): the same figures as one by one."""
    from stream.settings import Settings
    from stream.tools.eval_incidents import eval_incidents

    scenario = Scenario(
        days=12,
        burn_in_days=4,
        baseline_days=2,
        sessions_per_day=60,
        arrivals_per_day=10.0,
        lifetime_days=20.0,
        incidents=(("visitor_spike", 6.0, 2.0, 1.0),),
    )
    ended: list[str] = []
    alone = eval_incidents(Settings(), [5], scenario)
    apart = eval_incidents(
        Settings(), [5], scenario, on_progress=lambda label, n: ended.append(label), jobs=2
    )
    assert apart == alone and alone[0].events > 0
    assert sorted(ended) == ["seed 5, incidents: done", "seed 5, stationary: done"]
    with pytest.raises(ValueError, match="catalog"):
        eval_incidents(Settings(), [5], scenario, catalog=object(), jobs=2)  # type: ignore[arg-type]


def test_in_event_time_order_the_sessions_come_sorted_and_none_is_lost() -> None:
    """The generator dates a session up to a day before its clock, so its sessions come out
    of order; held back a day, they come in the order of their first events, and they are
    the generator's own sessions."""
    from stream.tools.incidents import InEventTimeOrder

    def traffic() -> IncidentTraffic:
        g = TrafficGenerator(customers=200, seed=8, session_gap_ms=DAY_MS // 300)
        return IncidentTraffic(g, [], seed=1)

    def first(session):  # type: ignore[no-untyped-def]
        return min(e["ts"] for e in _events(session))

    plain_traffic, ordered = traffic(), InEventTimeOrder(traffic())
    plain = [plain_traffic.session() for _ in range(1500)]
    ordered_sessions = [ordered.session() for _ in range(1000)]
    assert [first(s) for s in plain] != sorted(first(s) for s in plain)
    firsts = [first(s) for s in ordered_sessions]
    assert firsts == sorted(firsts)
    ids = {e["event_id"] for s in plain for e in _events(s)}
    given = {e["event_id"] for s in ordered_sessions for e in _events(s)}
    assert given <= ids
    # none lost: every session dated before the last one given was given
    before = {e["event_id"] for s in plain if first(s) < firsts[-1] for e in _events(s)}
    assert before <= given and len(before) > 0.9 * len(given)


def test_the_judge_keeps_a_late_alert_dated_inside_the_incident_apart() -> None:
    from models.drift import DriftAlert
    from stream.tools.eval_incidents import judge

    hour = 3_600_000
    start = 50 * DAY_MS
    outage = Incident("payment_outage", start, start + 10 * DAY_MS)

    def alert(since: int, detected: int) -> DriftAlert:
        return DriftAlert(
            "segment_flow", "rule:x entered", 3.0, 1.0, 3.0, since, detected, 30, None
        )

    late = alert(start + 30 * hour, start + 3 * DAY_MS)  # dated 30 h in, raised on day 3
    edges = [
        alert(start - DAY_MS, start + 11 * DAY_MS),  # the window's corners: in
        alert(start + 10 * DAY_MS, start + 11 * DAY_MS),
    ]
    outside = [
        alert(start + 9 * DAY_MS, start + 11 * DAY_MS + 1),  # raised past a day after its end
        alert(start + 10 * DAY_MS + 1, start + 10 * DAY_MS + 2),  # dated after its end
        alert(start - DAY_MS - 1, start + 2 * DAY_MS),  # dated before the day before it
        alert(start - 2 * hour, start - hour),  # raised before it started
    ]
    run = judge(1, Scenario(), 0, [outage], ([*outside, late, *edges], 1), (outside, 1))
    assert run.detected["payment_outage"] is None
    assert run.dated["payment_outage"] == late and run.dated_quiet["payment_outage"] is None
    for edge in edges:
        run = judge(1, Scenario(), 0, [outage], ([*outside, edge], 1), ([edge], 1))
        assert run.dated["payment_outage"] == edge == run.dated_quiet["payment_outage"]
    run = judge(1, Scenario(), 0, [outage], (outside, 1), ([], 1))
    assert run.dated["payment_outage"] is None
    # an incident shorter than a day: dated up to a day after its start, as within a day
    blip = Incident("visitor_spike", start, start + 2 * hour)
    after = alert(start + 20 * hour, start + 25 * hour)
    run = judge(1, Scenario(), 0, [blip], ([after], 1), ([], 1))
    assert run.dated["visitor_spike"] == after


def test_the_step_takes_each_session_as_it_comes_unless_told_to_take_more() -> None:
    """``replay_flows`` runs the step after every session (a live worker keeping up), or
    ``drain_every`` events at a time (a worker behind its topic): as many monitor updates as
    steps, and the same events either way."""

    class Counting:
        def __init__(self) -> None:
            self.calls = 0

        def add(self, counts: object, ts: int) -> list[object]:
            self.calls += 1
            return []

    def run(every: int) -> tuple[int, int, int]:
        g = TrafficGenerator(customers=300, seed=6, session_gap_ms=DAY_MS // 200)
        traffic = IncidentTraffic(g, [], seed=1)
        sessions = 0
        session = traffic.session

        def counted() -> list[Message]:
            nonlocal sessions
            sessions += 1
            return session()

        traffic.session = counted  # type: ignore[method-assign]
        monitor = Counting()
        _, events = replay_flows(
            Settings(),
            traffic,
            g.clock + 2 * DAY_MS,
            monitor,
            drain_every=every,  # type: ignore[arg-type]
        )
        return monitor.calls, sessions, events

    steps, sessions, events = run(0)
    coarse_steps, coarse_sessions, coarse_events = run(1000)
    assert (sessions, events) == (coarse_sessions, coarse_events) and events > 3000
    assert steps >= sessions  # at least a step a session (a batch is at most 500 messages)
    assert coarse_steps < sessions / 2
