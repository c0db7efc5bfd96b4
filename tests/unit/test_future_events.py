"""Events from the future (issue 14): one event dated ahead of the wall clock used to move the
watermark there and expire every customer's lifecycle stage. A message with an event dated later
than the worker's clock plus the allowed skew is now a dead letter, whole, with its reason."""

from __future__ import annotations

import orjson

from models.facts import LifecyclePolicy
from models.features import DAY_MS
from models.segments import SegmentCatalog
from models.step import SegmentStep, SourceMessage
from stream.settings import Settings
from stream.worker.app import build_step

from .test_step import T0, Harness, click, purchase

NOW = T0 + 10 * DAY_MS  # the worker's wall clock in these tests
SKEW = 300_000


def step(max_future_ms: int = SKEW) -> SegmentStep:
    catalog = SegmentCatalog(lifecycle=LifecyclePolicy(new_days=7, at_risk_days=30, lapsed_days=90))
    return SegmentStep(catalog, worker_id="w", max_future_ms=max_future_ms)


def run(h: Harness, *messages: SourceMessage, now_ms: int = NOW):  # type: ignore[no-untyped-def]
    out = h.step.run(list(messages), h.stored(), h.model, h.watermark, h.schedule, now_ms, 0.0)
    h.save(out)
    return out


def test_an_event_beyond_the_allowed_skew_is_a_dead_letter_and_moves_nothing() -> None:
    h = Harness(step())
    run(h, purchase("a", 1, T0), purchase("b", 2, T0 + DAY_MS, offset=1))
    assert h.profiles["a"].lifecycle == "new"
    year_2100 = 4_102_444_800_000
    later = T0 + 2 * DAY_MS
    out = run(h, purchase("c", 3, year_2100, offset=2), purchase("b", 4, later, offset=3))
    (dead,) = out.dead
    assert dead.message.offset == 2
    assert "'p3' is dated 2100-01-01T00:00:00+00:00" in dead.reason
    assert "ahead of the worker's clock (allowed skew 300 s)" in dead.reason
    assert f"{(year_2100 - NOW) / 1000:,.0f} s ahead" in dead.reason
    # The watermark moved only as far as the good event; nobody else expired.
    assert out.watermark == later
    assert "c" not in out.states and "c" not in h.profiles
    assert [w.customer_id for w in out.writes] == ["b"]
    assert h.profiles["a"].lifecycle == "new" and out.changes == []
    assert out.counters["dead_letters"] == 1


def test_within_the_skew_an_event_is_applied() -> None:
    h = Harness(step())
    out = run(h, purchase("a", 1, NOW + SKEW))  # a clock a little ahead: allowed
    assert out.dead == [] and out.watermark == NOW + SKEW


def test_one_future_event_in_an_array_makes_the_whole_message_a_dead_letter() -> None:
    h = Harness(step())
    good, bad = (
        {"event_id": f"c{n}", "type": "page_view", "customer_id": "a", "ts": ts}
        for n, ts in ((1, NOW), (2, NOW + SKEW + 1))
    )
    message = SourceMessage("clickstream", "clickstream/0", 0, b"a", orjson.dumps([good, bad]))
    out = run(h, message)
    assert [d.reason.split(" is dated")[0] for d in out.dead] == ["event 'c2'"]
    assert out.states == {} and out.writes == [] and out.watermark == 0


def test_no_check_with_a_skew_of_zero_or_without_a_wall_clock() -> None:
    far = NOW + 365 * DAY_MS
    assert run(Harness(step(0)), click("a", 1, far)).dead == []
    # A replay (segmenter eval) has no wall clock: it passes now_ms=0.
    assert run(Harness(step()), click("a", 1, far), now_ms=0).dead == []


def test_the_worker_step_takes_the_skew_from_the_settings() -> None:
    assert build_step(Settings()).intake.max_future_ms == 300_000
    assert build_step(Settings(max_future_skew_seconds=0)).intake.max_future_ms == 0
    assert build_step(Settings(max_future_skew_seconds=1.5)).intake.max_future_ms == 1500
