"""The bench's live-definitions phase: one worker holding many customers, then `segments apply`
of a changed file; how long until every customer is re-evaluated, and how fresh live traffic
stays meanwhile."""

from __future__ import annotations

import threading
import time
from importlib import resources
from typing import Any

from stream.definitions import publish_definitions
from stream.kafka import make_producer
from stream.serving.report import definitions_status
from stream.tools.bench_context import BenchContext
from stream.tools.bench_freshness import Freshness
from stream.tools.bench_report import Figure, Floor
from stream.tools.bench_traffic import percentile
from stream.tools.generator import TrafficGenerator
from stream.tools.producer import send_messages

__all__ = ["LiveDefinitionsBench", "changed_segments"]

#: Live traffic of known customers during the backfill, events a second (beside the probes).
LIVE_RATE = 1_000.0
#: Seconds from the apply to every customer re-evaluated, the target (at 100,000 customers).
TARGET_SECONDS = 10.0


def changed_segments() -> str:
    """The built-in rule segments with ``vip`` edited (one tier instead of two) and a new rule.

    >>> text = changed_segments()
    >>> "in: [platinum]}" in text and "big_spender:" in text
    True
    """
    text = resources.files("stream").joinpath("segments.yaml").read_text()
    edited = text.replace("{value_tier: {in: [platinum, gold]}}", "{value_tier: {in: [platinum]}}")
    assert edited != text, "the built-in vip rule changed: update the bench's edit"
    return edited.replace(
        "\nsegments:\n",
        "\nsegments:\n  big_spender:\n    kind: value\n    when: {revenue_total: {gte: 300}}\n",
        1,
    )


class LiveDefinitionsBench:
    """``memory_customers`` customers into one worker; then a changed segments file applied
    while probes (a new customer every 50 ms) and known customers' sessions keep coming."""

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.n = ctx.config.memory_customers
        self.settings = ctx.settings(log_level="info")
        self.probes = Freshness(ctx, LIVE_RATE, False)
        self.probes.settings = self.settings

    def run(self) -> None:
        ctx, n, settings = self.ctx, self.n, self.settings
        generator = TrafficGenerator(customers=n, seed=43)
        procs = ctx.start_workers(settings, 1, "defs")
        ctx.wait_joined(settings, 1, procs)
        messages = [m for cid in generator.customer_ids for m in generator.session(cid)]
        events = sum(m.events for m in messages)
        ctx.say(f"live definitions: {n:,} customers, {events:,} events")
        send_messages(settings, iter(messages))
        ctx.worker_span(settings, events, procs)
        if not ctx.wait_model(settings, procs, timeout=60.0):
            ctx.note(
                "live definitions: no model (or its first assignment not done) before the apply"
            )
        path = ctx.workdir / "segments-changed.yaml"
        path.write_text(changed_segments())
        client = ctx.client(settings)
        producer = make_producer(settings)
        stop = threading.Event()
        click = next(m for m in messages if m.source == "clickstream").value
        template = [click[0] if isinstance(click, list) else click]
        live = [m for cid in generator.customer_ids[:2000] for m in generator.session(cid)]
        threads = [
            threading.Thread(target=self.probes._probes, args=(template, producer), daemon=True),
            threading.Thread(target=self.probes._watch, daemon=True),
            threading.Thread(
                target=send_messages,
                args=(settings, iter(live)),
                kwargs={"rate": LIVE_RATE, "stop": stop, "producer": producer},
                daemon=True,
            ),
        ]
        for t in threads:
            t.start()
        time.sleep(3.0)  # probes before the apply: the baseline
        applied_at = time.perf_counter()
        published, _ = publish_definitions(settings, "segments", path)
        status: dict[str, Any] = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = definitions_status(client.workers())
            if status["complete"] >= published.version:
                break
            time.sleep(0.05)
        done_at = time.perf_counter()
        stop.set()
        self.probes.stop_at = time.perf_counter()
        self.probes.stop.set()
        for t in threads:
            t.join(timeout=30)
        producer.close()
        client.close()
        ctx.stop(procs)
        self._figures(published.published_at, status, applied_at, done_at)

    def _figures(
        self, published_at: int, status: dict[str, Any], applied_at: float, done_at: float
    ) -> None:
        backfill = status.get("backfill") or {}
        finished = backfill.get("finished_at")
        section = f"Live definitions ({self.n:,} customers, one worker)"
        report = self.ctx.report
        if not status.get("complete") or finished is None:
            self.ctx.note("live definitions: the backfill did not finish within 600 s")
            return
        total = (finished - published_at) / 1000
        note = (
            f"{backfill['done']:,} customers re-evaluated, {backfill.get('written', 0):,} moved "
            f"and written, {backfill.get('changes', 0):,} changes; worker's own backfill "
            f"{backfill['seconds']:.1f} s at SEGMENTER_BACKFILL_RATE "
            f"{self.settings.backfill_rate:,.0f}/s"
        )
        report.add(
            Figure(
                section,
                "apply published to every customer re-evaluated",
                total,
                "s",
                target=f"<= {TARGET_SECONDS:.0f} s" if self.n >= 100_000 else "",
                met=total <= TARGET_SECONDS if self.n >= 100_000 else None,
                note=note,
                floor=Floor.DEFINITIONS,
                extra={
                    "customers": backfill["done"],
                    "backfill seconds": backfill["seconds"],
                    "rate cap": self.settings.backfill_rate,
                    "seconds allowed": TARGET_SECONDS,
                },
            )
        )
        sent, seen = self.probes.sent, self.probes.seen
        before = [(seen[c] - t) * 1000 for c, t in sent.items() if c in seen and t < applied_at]
        during = [
            (seen[c] - t) * 1000
            for c, t in sent.items()
            if c in seen and applied_at <= t <= done_at
        ]
        probes = f"{len(during)} probes during, {len(before)} before, with {LIVE_RATE:,.0f} ev/s"
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            report.add(
                Figure(
                    section,
                    f"freshness {name} during the backfill",
                    percentile(during, q),
                    "ms",
                    percentile(before, q),
                    f"{name} before the apply",
                    note=probes,
                )
            )
        self.ctx.say(
            f"  apply to done {total:.1f} s; freshness p99 {percentile(during, 0.99):.1f} ms "
            f"during, {percentile(before, 0.99):.1f} ms before"
        )
