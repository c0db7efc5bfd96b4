"""Segment-flow drift: a planted rate change is alerted with its segment, start and magnitude;
stationary Poisson flows over months stay (nearly) silent; tiny segments do not alert on noise.
And the wiring: a step's changes travel to the trainer as a flows message and come out as an
alert on the drift topic."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from models.drift import FlowMonitor, flow_counts
from models.segments import SegmentChange
from models.step import StepOutcome
from stream.settings import Settings
from stream.store.memory import InMemorySegmentStore
from stream.worker.effects import flows_message
from stream.worker.metrics import WorkerMetrics
from stream.worker.trainer import Trainer, flow_monitor

HOUR = 3_600_000
DAY = 24 * HOUR
CHANGE_DAY = 30


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small means these tests use."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _cycle(hour: int) -> float:
    return 1.0 + 0.8 * math.sin(2 * math.pi * (hour % 24) / 24)  # a daily cycle


@pytest.mark.parametrize("seed", range(5))
def test_a_planted_3x_rise_is_alerted_with_its_segment_start_and_magnitude(seed: int) -> None:
    rng = random.Random(seed)
    monitor = FlowMonitor()
    alerts = []
    for hour in range(24 * 40):
        for segment, rate in (("rule:cart_abandoner", 5.0), ("rule:vip", 3.0)):
            if segment == "rule:cart_abandoner" and hour >= 24 * CHANGE_DAY:
                rate *= 3
            n = _poisson(rng, rate * _cycle(hour))
            alerts += monitor.add({(segment, "entered"): n}, hour * HOUR)
    assert len(alerts) == 1, [a.message for a in alerts]
    (alert,) = alerts
    assert (alert.kind, alert.segment, alert.flow) == (
        "segment_flow",
        "rule:cart_abandoner",
        "entered",
    )
    change = CHANGE_DAY * DAY
    assert abs(alert.since - change) <= 2 * HOUR  # dated within two buckets
    assert change <= alert.detected_at <= change + 12 * HOUR
    assert 2.0 <= alert.magnitude <= 4.5
    assert alert.size is not None and alert.size > 0  # entries seen (no exits here)
    assert "3" in alert.message or "2" in alert.message or "4" in alert.message


def test_a_fall_to_a_third_is_alerted_as_a_fall() -> None:
    rng = random.Random(11)
    monitor = FlowMonitor()
    alerts = []
    for hour in range(24 * 40):
        rate = 8.0 if hour < 24 * CHANGE_DAY else 8.0 / 3
        alerts += monitor.add(
            {("rule:one_time_buyer", "entered"): _poisson(rng, rate)}, hour * HOUR
        )
    assert [(a.segment, a.flow) for a in alerts] == [("rule:one_time_buyer", "entered")]
    assert alerts[0].magnitude < 0.5 and alerts[0].after < alerts[0].before
    assert abs(alerts[0].since - CHANGE_DAY * DAY) <= 3 * HOUR


@pytest.mark.parametrize("seed", range(3))
def test_a_three_day_spike_is_one_alert_not_a_fall_when_it_ends(seed: int) -> None:
    """New visitors at ten times the rate for three days: one rise, dated at the start; the
    baseline's level is the median day's, so the end of the spike is no 'fall'."""
    rng = random.Random(seed)
    monitor = FlowMonitor()
    alerts = []
    for hour in range(24 * 50):
        rate = 2.0 * (10 if 24 * CHANGE_DAY <= hour < 24 * (CHANGE_DAY + 3) else 1)
        alerts += monitor.add({("rule:lifecycle_new", "entered"): _poisson(rng, rate)}, hour * HOUR)
    assert [(a.segment, a.flow) for a in alerts] == [("rule:lifecycle_new", "entered")]
    assert abs(alerts[0].since - CHANGE_DAY * DAY) <= 4 * HOUR and alerts[0].magnitude > 4


@pytest.mark.parametrize(
    "seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)
def test_stationary_poisson_flows_over_months_raise_at_most_one_alert_a_month(seed: int) -> None:
    """80 segments (entries and exits: 160 flows) from a trickle to 50 an hour, daily cycles,
    four months: at most four alerts."""
    rng = np.random.default_rng(seed)
    rates = rng.lognormal(0.0, 1.5, size=(80, 2))
    monitor = FlowMonitor()
    alerts = []
    months = 4
    for hour in range(24 * 30 * months):
        counts = rng.poisson(rates * _cycle(hour))
        flows = {
            (f"rule:s{i}", change): int(counts[i, j])
            for i in range(80)
            for j, change in enumerate(("entered", "exited"))
            if counts[i, j]
        }
        alerts += monitor.add(flows, hour * HOUR)
    assert len(alerts) <= months, [a.message for a in alerts]


def test_tiny_segments_do_not_alert_on_noise_nor_on_a_small_jump() -> None:
    """A segment of a few changes a day, with bursts of three or four at once: no alert on
    its noise, nor when its rate rises by half; a tripling, kept up for weeks, is a change
    (about 6 a day instead of 2: alerted once ``min_count`` changes came in its run)."""
    for after, alerted in ((0.08, False), (0.12, False), (0.24, True)):
        rng = random.Random(5)
        monitor = FlowMonitor()
        alerts = []
        for hour in range(24 * 90):
            rate = 0.08 if hour < 24 * 60 else after
            n = _poisson(rng, rate)
            if rng.random() < 0.003:
                n += rng.randint(3, 4)
            alerts += monitor.add({("rule:enterprise", "entered"): n}, hour * HOUR)
        assert bool(alerts) == alerted, (after, [a.message for a in alerts])
        if alerted:
            assert alerts[0].since >= 58 * DAY and alerts[0].samples >= monitor.min_count


def test_a_flow_that_rises_from_nothing_is_alerted_within_hours() -> None:
    """Abandoned checkouts, none for weeks, then two an hour (a payment outage): the buckets
    that show the rise must not read as overdispersion and hide it (they did, for five
    days, when a residual was divided by an expectation near zero)."""
    rng = random.Random(2)
    monitor = FlowMonitor()
    alerts = []
    for hour in range(24 * 80):
        flows = {("rule:vip", "entered"): _poisson(rng, 8.0)}
        if hour >= 24 * 66:
            flows[("rule:checkout_abandoned", "entered")] = _poisson(rng, 2.2)
        alerts += monitor.add(flows, hour * HOUR)
    first = alerts[0]
    assert (first.segment, first.flow) == ("rule:checkout_abandoned", "entered")
    assert first.detected_at - 66 * DAY <= DAY // 2 and abs(first.since - 66 * DAY) <= 2 * HOUR


def test_a_flow_that_appears_from_nothing_is_alerted_and_a_new_flow_waits_for_history() -> None:
    monitor = FlowMonitor()
    alerts = []
    for hour in range(24 * 20):
        flows = {("rule:vip", "entered"): 4}
        if hour >= 24 * 12:
            flows[("rule:lifecycle_lapsed", "entered")] = 5  # unseen before day 12
        alerts += monitor.add(flows, hour * HOUR)
    assert [(a.segment, a.flow) for a in alerts] == [("rule:lifecycle_lapsed", "entered")]
    assert alerts[0].since == 12 * DAY


def test_late_counts_go_to_the_oldest_open_bucket_and_bad_buckets_are_refused() -> None:
    monitor = FlowMonitor()
    monitor.add({("rule:vip", "entered"): 1}, 5 * HOUR)
    monitor.add({("rule:vip", "entered"): 2}, 9 * HOUR)  # closes buckets 5 to 7
    monitor.add({("rule:vip", "entered"): 3}, 2 * HOUR)  # late: into bucket 8
    assert monitor.sizes["rule:vip"] == 6
    assert dict(monitor._open) == {8: {("rule:vip", "entered"): 3}, 9: {("rule:vip", "entered"): 2}}
    with pytest.raises(ValueError, match="divide a day"):
        FlowMonitor(bucket_ms=7 * HOUR)
    with pytest.raises(ValueError, match="min_history_days"):
        FlowMonitor(baseline_days=3, min_history_days=5)
    with pytest.raises(ValueError, match="divide a day"):
        Settings(drift_flow_bucket_seconds=7 * 3600)


def test_the_workers_flows_reach_the_trainer_and_its_alerts_the_drift_topic() -> None:
    """Effects' flows message, through the trainer, to the drift topic and Redis list, with the
    store's size of the segment."""

    async def run() -> tuple[list[tuple[str, bytes | None, bytes | None]], InMemorySegmentStore]:
        settings = Settings()
        store = InMemorySegmentStore()
        sent: list[tuple[str, bytes | None, bytes | None]] = []

        async def send(topic: str, key: bytes | None, value: bytes | None) -> asyncio.Future[None]:
            sent.append((topic, key, value))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        topics = {"drift": "segment-drift", "snapshots": "model-snapshots"}
        trainer = Trainer(settings, store, send, topics, WorkerMetrics(), lambda: None)
        rng = random.Random(3)
        for hour in range(24 * 20):
            rate = 6.0 if hour < 24 * 15 else 24.0
            change = SegmentChange("c", "rule:cart_abandoner", "entered", False, True, 0, "r", 1)
            outcome = StepOutcome(watermark=hour * HOUR, changes=[change] * _poisson(rng, rate))
            await trainer.train([flows_message(outcome)])
        return sent, store

    sent, store = asyncio.run(run())
    alerts = [orjson.loads(v) for topic, _, v in sent if topic == "segment-drift" and v]
    assert [(a["kind"], a["segment"], a["flow"]) for a in alerts] == [
        ("segment_flow", "rule:cart_abandoner", "entered")
    ]
    assert abs(alerts[0]["since"] - 15 * DAY) <= 2 * HOUR
    assert alerts[0]["magnitude"] > 2.5
    assert alerts[0]["size"] is None or isinstance(alerts[0]["size"], int)
    assert asyncio.run(store.drift()) == alerts


def test_flow_counts_count_entries_and_exits_per_segment() -> None:
    changes = [
        SegmentChange("a", "cluster:1", "exited", 1, 2, 0, "r", 1),
        SegmentChange("a", "cluster:2", "entered", 1, 2, 0, "r", 1),
        SegmentChange("b", "cluster:2", "entered", None, 2, 0, "r", 1),
    ]
    assert flow_counts(changes) == {("cluster:1", "exited"): 1, ("cluster:2", "entered"): 2}


class _StoreWithHistory(InMemorySegmentStore):
    """The in-memory store, its size history given (what ``size_snapshot`` left in Redis)."""

    def __init__(self, history: list[dict[str, object]]) -> None:
        super().__init__()
        self._given = history

    async def history(self, limit: int = 500) -> list[dict[str, object]]:
        return self._given[-limit:]


def test_a_new_trainer_learns_the_flows_history_from_the_size_snapshots() -> None:
    """After a restart the trainer's monitor is not blind for a week: eight days of size
    snapshots (5 entries an hour into rule:vip) are its history, so a jump alerts at once."""
    history: list[dict[str, object]] = [
        {"bucket": h * HOUR, "entered_total": {"rule:vip": 5 * h}, "exited_total": {}}
        for h in range(24 * 8)
    ]

    async def run() -> list[dict[str, object]]:
        sent: list[dict[str, object]] = []

        async def send(topic: str, key: bytes | None, value: bytes | None) -> asyncio.Future[None]:
            if topic == "segment-drift" and value:
                sent.append(orjson.loads(value))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        trainer = Trainer(
            Settings(),
            _StoreWithHistory(history),
            send,
            {"drift": "segment-drift"},
            WorkerMetrics(),
            lambda: None,
        )
        change = SegmentChange("c", "rule:vip", "entered", False, True, 0, "r", 1)
        for hour in range(24 * 8, 24 * 8 + 6):
            await trainer.train([flows_message(StepOutcome(hour * HOUR, changes=[change] * 40))])
        return sent

    alerts = asyncio.run(run())
    assert [(a["segment"], a["flow"]) for a in alerts] == [("rule:vip", "entered")]
    assert alerts[0]["since"] == 24 * 8 * HOUR


def test_the_flow_settings_configure_the_monitor_the_trainer_and_eval_incidents_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every ``SEGMENTER_DRIFT_FLOW_*`` setting reaches ``flow_monitor``; a rise of 1 or less
    (a CUSUM tuned to no change) or not finite is refused at start-up."""
    values = {
        "bucket_seconds": ("1800", "bucket_ms", 1_800_000),
        "baseline_days": ("10", "baseline_days", 10),
        "min_history_days": ("5", "min_history_days", 5),
        "rise": ("1.5", "rise", 1.5),
        "threshold": ("9", "threshold", 9.0),
        "min_count": ("7", "min_count", 7),
        "min_ratio": ("1.2", "min_ratio", 1.2),
    }
    prefix = "drift_flow_"
    fields = {name[len(prefix) :] for name in Settings.model_fields if name.startswith(prefix)}
    assert fields == set(values), (
        "a new SEGMENTER_DRIFT_FLOW_* setting: add it here and to flow_monitor"
    )
    for name, (value, _, _) in values.items():
        monkeypatch.setenv(f"SEGMENTER_DRIFT_FLOW_{name.upper()}", value)
    monitor = flow_monitor(Settings())
    assert {attr: getattr(monitor, attr) for _, attr, _ in values.values()} == {
        attr: want for _, attr, want in values.values()
    }
    for bad in ("1", "inf", "nan"):
        monkeypatch.setenv("SEGMENTER_DRIFT_FLOW_RISE", bad)
        with pytest.raises(ValidationError, match="drift_flow_rise"):
            Settings()
