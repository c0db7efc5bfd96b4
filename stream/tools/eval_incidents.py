"""`segmenter eval-incidents`: does segment-flow drift see incidents, and stay quiet without?

For each seed, two streams of the same generator run through the worker's step
(``stream.tools.evaluate.Replay``: the step and the trainer as the worker runs them), each
step's changes feeding the flow monitor the worker's trainer runs (``flow_monitor``):

- the incident stream: a steady population (``SteadyPopulation``) with three incidents
  (``stream.tools.incidents``) after a burn-in: a payment outage failing half the checkouts on
  mobile for three weeks (``Scenario.incidents``: another share), a spike of new visitors who
  browse and do not buy, and a broken checkout that loops mobile users back to the cart;
- the stationary stream: the same seed without the incidents.

``Scenario.failing_checkouts`` fails a share of every checkout at all times in both streams,
a baseline of abandoned checkouts (the generator's own has none); the outage then fails its
share of the checkouts left.

Sessions reach the step in event-time order (``Scenario.in_order``, ``InEventTimeOrder``), as
a live shop's visits do.

Per incident: alerted within a day of event time of its start (an alert raised in the day
after the start and dated within a day of it); where a seed missed that, whether an alert
that may be its own came at all, however late (``dated_window``), and whether the stationary
stream alerted in the same window; per stationary stream: flow alerts a month
after the burn-in (the first weeks of a stream are not stationary: every customer is first
seen then, and leaves "new" thirty days later). Figures are the median and the worst over
the seeds.
"""

from __future__ import annotations

import functools
import multiprocessing
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from models.drift import DriftAlert, FlowMonitor, flow_counts
from models.segments import SegmentCatalog
from models.step import StepOutcome
from stream.settings import Settings
from stream.tools.evaluate import Replay
from stream.tools.generator import TrafficGenerator
from stream.tools.incidents import (
    DAY_MS,
    Incident,
    IncidentTraffic,
    InEventTimeOrder,
    SteadyPopulation,
    check_failing_checkouts,
)
from stream.worker.trainer import flow_monitor

__all__ = ["IncidentRun", "Scenario", "eval_incidents", "judge", "replay_flows", "report_rows"]

_MONTH_MS = 30 * DAY_MS
_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Scenario:
    """A small shop's months of traffic: sessions a day, a renewing population, incidents
    placed in days from the start (kind, start day, length in days, share).

    Alerts on the stationary stream count from ``burn_in_days`` on: before, the stream is not
    stationary (every customer is first seen in its first days: they leave "new" 30 days
    later, and those who stop buying reach "at risk" 60 to 70 days later, in waves). An
    incident may start once the flows have a full baseline (``baseline_days``)."""

    days: int = 120
    burn_in_days: int = 75
    baseline_days: int = 14
    sessions_per_day: int = 1000
    arrivals_per_day: float = 40.0
    lifetime_days: float = 75.0
    #: Sessions arrive in event-time order, as a live shop's visits do (True), or each up to
    #: a day late, as the generator dates them (False: a day of lag before any alert).
    in_order: bool = True
    #: The share of every checkout that fails at all times, in both streams: a baseline of
    #: abandoned checkouts (``IncidentTraffic``; the generator's own has none).
    failing_checkouts: float = 0.0
    #: Events the step takes at a time (``replay_flows``): 0, each session as it comes (a
    #: live worker keeping up); 1,000 as the evaluation did before (a worker behind its topic).
    drain_every: int = 0
    incidents: tuple[tuple[str, float, float, float], ...] = (
        ("payment_outage", 66.3, 21.0, 0.5),
        ("visitor_spike", 95.6, 3.0, 1.0),
        ("checkout_loop", 105.1, 5.0, 1.0),
    )

    def __post_init__(self) -> None:
        check_failing_checkouts(self.failing_checkouts)
        if self.drain_every < 0:
            raise ValueError("drain_every must be 0 (each session) or more events")
        for kind, _, _, share in self.incidents:
            try:
                Incident(kind, 0, 1, share)  # its kind and share as an incident checks them
            except ValueError as exc:
                raise ValueError(f"{kind}: {exc}") from None
        if not 0 <= self.burn_in_days < self.days:
            raise ValueError("burn_in_days must be less than days")
        for kind, start, length, _ in self.incidents:
            if start < self.baseline_days or start + length > self.days:
                raise ValueError(f"{kind} must lie between the first baseline and the end")


@dataclass
class IncidentRun:
    """One seed: the incidents' detection and the stationary stream's alerts."""

    seed: int
    events: int
    stationary_events: int
    detected: dict[str, DriftAlert | None]  # incident kind -> first alert that counts
    starts: dict[str, int]
    #: incident kind -> the first alert raised from its start to a day after its end and
    #: dated from a day before its start to its end (or a day after its start, if it is
    #: shorter), however late: how long a faint fault takes (``dated_window``)
    dated: dict[str, DriftAlert | None] = field(default_factory=dict)
    #: the same window's first alert on the stationary stream: what noise alone raises there
    dated_quiet: dict[str, DriftAlert | None] = field(default_factory=dict)
    incident_alerts: list[DriftAlert] = field(default_factory=list)
    stationary_alerts: list[DriftAlert] = field(default_factory=list)  # after the burn-in
    stray_alerts: int = 0  # on the incident stream, far from every incident
    measured_months: float = 0.0

    @property
    def false_per_month(self) -> float:
        return len(self.stationary_alerts) / self.measured_months


def replay_flows(
    settings: Settings,
    traffic: IncidentTraffic | InEventTimeOrder,
    end_ms: int,
    monitor: FlowMonitor,
    catalog: SegmentCatalog | None = None,
    on_progress: Callable[[int], None] | None = None,
    drain_every: int = 0,
) -> tuple[list[DriftAlert], int]:
    """Run ``traffic`` until event time ``end_ms`` through the worker's step, every step's
    changes into ``monitor``; returns its alerts and the events sent.

    The step takes each session as it comes (``drain_every`` 0), as a live worker keeping up
    with a shop does; or ``drain_every`` events at a time, as a worker behind its topic does.
    The monitor counts a step's changes in the bucket of its watermark, so at a small shop's
    rate a coarse cadence (1,000 events: about 1.7 hours of this scenario's event time) put
    hours of changes in one bucket: the flows looked burstier than the traffic is (the
    checkout_abandoned entries 4.6 times Poisson's dispersion, against 1.8 session by
    session, seed 1, a scratch run), and the monitor, which weighs its evidence down by that
    dispersion, slower (the default outage over a 20% baseline of failed checkouts, seeds 1-3:
    alerted after 100 h against 22 h, median; ``Scenario.drain_every``)."""
    replay = Replay(settings, catalog)
    alerts: list[DriftAlert] = []

    def tapped(outcome: StepOutcome) -> None:
        alerts.extend(monitor.add(flow_counts(outcome.changes), outcome.watermark))

    replay.on_outcome = tapped
    drained = reported = 0
    while traffic.generator.clock < end_ms:
        for message in traffic.session():
            replay.send(message)
        if replay.sent - drained >= drain_every:
            replay.drain()
            drained = replay.sent
        if on_progress and replay.sent - reported >= 10_000:
            on_progress(replay.sent)
            reported = replay.sent
    replay.drain()
    return alerts, replay.sent


def _traffic(
    scenario: Scenario, seed: int, with_incidents: bool
) -> tuple[IncidentTraffic | InEventTimeOrder, int]:
    customers = round(
        scenario.arrivals_per_day * (scenario.lifetime_days + scenario.days) * 1.1 + 100
    )
    generator = TrafficGenerator(
        customers=customers, seed=seed, session_gap_ms=DAY_MS // scenario.sessions_per_day
    )
    start = generator.clock
    population = SteadyPopulation(
        generator, scenario.arrivals_per_day, scenario.lifetime_days, seed=seed
    )
    incidents = [
        Incident(kind, start + int(day * DAY_MS), start + int((day + length) * DAY_MS), share)
        for kind, day, length, share in scenario.incidents
    ]
    traffic = IncidentTraffic(
        generator,
        incidents if with_incidents else [],
        seed=seed + 1,
        pick=population.pick,
        failing_checkouts=scenario.failing_checkouts,
    )
    return (InEventTimeOrder(traffic) if scenario.in_order else traffic), start


#: One stream's alerts, events sent, incidents and first event time (``run_stream``).
_Stream = tuple[list[DriftAlert], int, list[Incident], int]


def run_stream(
    settings: Settings,
    seed: int,
    with_incidents: bool,
    scenario: Scenario,
    catalog: SegmentCatalog | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> _Stream:
    """One of a seed's two streams: its alerts, events sent, incidents and first event time."""
    traffic, start = _traffic(scenario, seed, with_incidents)
    label = "incidents" if with_incidents else "stationary"
    alerts, events = replay_flows(
        settings,
        traffic,
        start + scenario.days * DAY_MS,
        flow_monitor(settings),
        catalog,
        functools.partial(on_progress, f"seed {seed}, {label}") if on_progress else None,
        scenario.drain_every,
    )
    return alerts, events, list(traffic.incidents), start


def run_seed(
    settings: Settings,
    seed: int,
    scenario: Scenario | None = None,
    catalog: SegmentCatalog | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> IncidentRun:
    """One seed's incident stream and stationary stream."""
    scenario = scenario or Scenario()
    return _judge_streams(
        seed,
        scenario,
        run_stream(settings, seed, True, scenario, catalog, on_progress),
        run_stream(settings, seed, False, scenario, catalog, on_progress),
    )


def _judge_streams(
    seed: int, scenario: Scenario, incident: _Stream, stationary: _Stream
) -> IncidentRun:
    """``judge`` on a seed's two streams as ``run_stream`` returns them."""
    alerts, events, incidents, start = incident
    quiet, quiet_events, _, _ = stationary
    return judge(seed, scenario, start, incidents, (alerts, events), (quiet, quiet_events))


def dated_window(alerts: Sequence[DriftAlert], incident: Incident) -> DriftAlert | None:
    """The first of ``alerts`` raised from ``incident``'s start to a day after its end and
    dated from a day before its start to its end (a day after its start, if it ends sooner):
    an alert that may be the incident's, however late."""
    latest_since = max(incident.end_ms, incident.start_ms + DAY_MS)
    inside = [
        a
        for a in alerts
        if incident.start_ms <= a.detected_at <= incident.end_ms + DAY_MS
        and incident.start_ms - DAY_MS <= a.since <= latest_since
    ]
    return min(inside, key=lambda a: a.detected_at, default=None)


def judge(
    seed: int,
    scenario: Scenario,
    start: int,
    incidents: Sequence[Incident],
    with_incidents: tuple[list[DriftAlert], int],
    stationary: tuple[list[DriftAlert], int],
) -> IncidentRun:
    """One seed's figures from the alerts of its two streams (``start``: their first event
    time): which incident was alerted within a day, dated within a day; which at all, however
    late (``dated_window``), and whether the stationary stream alerted in that window too;
    what else alerted."""
    alerts, events = with_incidents
    quiet, quiet_events = stationary
    burn_in = start + scenario.burn_in_days * DAY_MS
    detected: dict[str, DriftAlert | None] = {}
    dated: dict[str, DriftAlert | None] = {}
    dated_quiet: dict[str, DriftAlert | None] = {}
    starts = {}
    near = []
    for incident in incidents:
        starts[incident.kind] = incident.start_ms
        hits = [
            a
            for a in alerts
            if incident.start_ms <= a.detected_at <= incident.start_ms + DAY_MS
            and abs(a.since - incident.start_ms) <= DAY_MS
        ]
        detected[incident.kind] = min(hits, key=lambda a: a.detected_at, default=None)
        dated[incident.kind] = dated_window(alerts, incident)
        dated_quiet[incident.kind] = dated_window(quiet, incident)
        near.append((incident.start_ms - DAY_MS, incident.end_ms + 2 * DAY_MS))
    stray = sum(
        1
        for a in alerts
        if a.detected_at >= burn_in and not any(lo <= a.since <= hi for lo, hi in near)
    )
    return IncidentRun(
        seed=seed,
        events=events,
        stationary_events=quiet_events,
        detected=detected,
        starts=starts,
        dated=dated,
        dated_quiet=dated_quiet,
        incident_alerts=[a for a in alerts if a.detected_at >= burn_in],
        stationary_alerts=[a for a in quiet if a.detected_at >= burn_in],
        stray_alerts=stray,
        measured_months=(scenario.days - scenario.burn_in_days) * DAY_MS / _MONTH_MS,
    )


def eval_incidents(
    settings: Settings,
    seeds: Sequence[int] = (1, 2, 3),
    scenario: Scenario | None = None,
    catalog: SegmentCatalog | None = None,
    on_progress: Callable[[str, int], None] | None = None,
    jobs: int = 1,
) -> list[IncidentRun]:
    """Every seed's run (see the module's docstring); ``report_rows`` makes the table.

    ``jobs`` above 1: the streams (two a seed) run in that many processes of their own, each
    reported to ``on_progress`` as it ends (with the events it sent) rather than as it goes;
    ``catalog`` must then be None (the settings' own)."""
    scenario = scenario or Scenario()
    if jobs <= 1:
        return [run_seed(settings, seed, scenario, catalog, on_progress) for seed in seeds]
    if catalog is not None:
        raise ValueError("streams in processes of their own use the settings' catalog")
    tasks = [(seed, flag) for seed in seeds for flag in (True, False)]
    done: dict[tuple[int, bool], _Stream] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            pool.submit(run_stream, settings, seed, flag, scenario): (seed, flag)
            for seed, flag in tasks
        }
        for future in as_completed(futures):
            seed, flag = futures[future]
            done[seed, flag] = future.result()
            if on_progress:
                label = "incidents" if flag else "stationary"
                on_progress(f"seed {seed}, {label}: done", done[seed, flag][1])
    return [_judge_streams(seed, scenario, done[seed, True], done[seed, False]) for seed in seeds]


def _alerted_at_all(kind: str, runs: Sequence[IncidentRun]) -> tuple[str, str, str, bool]:
    """The row of an incident some seed did not alert within a day: in how many seeds an
    alert that may be its own (``dated_window``) came at all, how late (median, worst) and
    dated how far from its start (median); and in how many seeds the stationary stream
    alerted in the same window, which noise alone does."""
    late = [
        ((a.detected_at - r.starts[kind]) / _HOUR_MS, (a.since - r.starts[kind]) / _HOUR_MS)
        for r in runs
        if (a := r.dated.get(kind)) is not None
    ]
    value = f"{len(late)} of {len(runs)} seeds"
    if late:
        after = [h for h, _ in late]
        dated = statistics.median(d for _, d in late)
        value += (
            f", after {statistics.median(after):.0f} h (worst {max(after):.0f} h), "
            f"dated {dated:+.0f} h"
        )
    noise = sum(r.dated_quiet.get(kind) is not None for r in runs)
    value += f"; stationary stream in that window: {noise} of {len(runs)}"
    name = f"{kind}: alerted at all, however late (by a day after its end)"
    return name, value, "(reported)", True


def report_rows(runs: Sequence[IncidentRun]) -> list[tuple[str, str, str, bool]]:
    """(figure, median / worst over the seeds, target, met) for every figure."""
    rows = []
    kinds = list(runs[0].detected) if runs else []
    for kind in kinds:
        found = [r.detected[kind] for r in runs]
        share = sum(a is not None for a in found) / len(found)
        rows.append(
            (
                f"{kind}: alerted within a day of its start, dated within a day",
                f"{sum(a is not None for a in found)} of {len(found)} seeds",
                "every seed",
                share == 1.0,
            )
        )
        delays = [
            (a.detected_at - r.starts[kind]) / _HOUR_MS
            for r, a in zip(runs, found, strict=True)
            if a is not None
        ]
        errors = [
            abs(a.since - r.starts[kind]) / _HOUR_MS
            for r, a in zip(runs, found, strict=True)
            if a is not None
        ]
        if share < 1.0:  # how late, if at all, where a day was not enough
            rows.append(_alerted_at_all(kind, runs))
        if delays:
            rows.append(
                (
                    f"{kind}: hours to the alert / dating error",
                    f"{statistics.median(delays):.0f} / {statistics.median(errors):.0f} h "
                    f"(worst {max(delays):.0f} / {max(errors):.0f} h)",
                    "<= 24 / 24 h",
                    max(delays) <= 24 and max(errors) <= 24,
                )
            )
    per_month = [r.false_per_month for r in runs]
    rows.append(
        (
            "flow alerts a month on a stationary stream",
            f"median {statistics.median(per_month):.2f}, worst {max(per_month):.2f}"
            if per_month
            else "-",
            "<= 1",
            bool(per_month) and max(per_month) <= 1.0,
        )
    )
    stray = [r.stray_alerts / r.measured_months for r in runs]
    rows.append(
        (
            "incident stream: alerts a month far from every incident",
            f"median {statistics.median(stray):.2f}, worst {max(stray):.2f}" if stray else "-",
            "(reported)",
            True,
        )
    )
    return rows
