"""The worker's timer for customers the batches left due (``Segmenting.expire_due``): chunks
of ``EXPIRY_CHUNK``, ``max_expiries`` a call, ``EXPIRY_BUDGET`` seconds a call. In-process, the
worker's segmenting shell and effects over the in-memory store (``test_store_rebuild``'s
harness: no broker or Redis here)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from models.features import DAY_MS
from models.step import MIN_EXPIRIES, StepOutcome
from stream.worker import segmenting
from tests.unit.test_store_rebuild import Worker

T0 = 1_795_000_000_000
BUYERS = 600


def _purchase(i: int) -> SimpleNamespace:
    value = {"event_id": f"e{i}", "customer_id": f"c-{i}", "ts": T0, "amount": 5.0}
    return SimpleNamespace(source="purchases", key=f"c-{i}", value=value)


def _click(days: int) -> SimpleNamespace:
    value = {
        "event_id": f"k{days}",
        "type": "page_view",
        "customer_id": "k",
        "ts": T0 + days * DAY_MS,
    }
    return SimpleNamespace(source="clickstream", key="k", value=value)


async def _due_worker() -> tuple[Worker, list[tuple[int | None, int]]]:
    """A worker whose 600 buyers all came due (a click 400 days on: they lapsed), the click's
    batch having taken ``MIN_EXPIRIES`` of them; and the log of its later steps (the
    expiries asked for, the customers re-evaluated)."""
    w = Worker()
    await w.check()
    await w.handle([_purchase(i) for i in range(BUYERS)])
    steps: list[tuple[int | None, int]] = []
    apply = w.seg._apply_batch

    async def logged(batch: Any, expiries: int | None = None) -> StepOutcome:
        outcome = await apply(batch, expiries)
        steps.append((expiries, outcome.counters.get("expired", 0)))
        return outcome

    w.seg._apply_batch = logged  # type: ignore[method-assign]
    await w.handle([_click(400)])
    assert steps == [(None, MIN_EXPIRIES)]
    steps.clear()
    return w, steps


def test_the_timer_takes_due_customers_in_chunks_up_to_its_cap_a_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(segmenting, "EXPIRY_CHUNK", 50)

    async def run() -> None:
        w, steps = await _due_worker()
        w.seg.step.max_expiries = 300
        await w.seg.expire_due()
        assert steps == [(50, 50)] * 6
        assert w.seg.schedule.has_due(w.seg.watermark)
        steps.clear()
        await w.seg.expire_due()  # the rest
        assert steps == [(50, 50)] * 4
        assert not w.seg.schedule.has_due(w.seg.watermark)
        steps.clear()
        await w.seg.expire_due()  # nothing due: no step
        assert steps == []
        assert all(p.lifecycle == "lapsed" for c, p in w.profiles().items() if c != "k")

    asyncio.run(run())


def test_the_timer_stops_at_its_budget_after_one_chunk_at_least(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(segmenting, "EXPIRY_CHUNK", 50)
    monkeypatch.setattr(segmenting, "EXPIRY_BUDGET", 0.0)

    async def run() -> None:
        w, steps = await _due_worker()
        await w.seg.expire_due()
        assert steps == [(50, 50)]

    asyncio.run(run())
