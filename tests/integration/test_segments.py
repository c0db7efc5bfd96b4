"""Personas, rule segments and time-driven lifecycle exits, on the real broker and Redis."""

from __future__ import annotations

import orjson
import pytest

from models.features import DAY_MS
from stream.kafka import make_producer, read_topic
from stream.tools.generator import GENERATOR_PERSONAS, Realism, TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, wait_until

pytestmark = pytest.mark.integration

START = 1_795_000_000_000


def test_personas_rules_and_an_idle_customer_moving_to_at_risk(stack, tmp_path):
    settings = make_settings(stack, partitions=2)
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        # An idle customer: one purchase 90 days before everyone else's traffic.
        idle_ts = START - 90 * DAY_MS
        producer = make_producer(settings)
        producer.send(
            settings.topic("purchases"),
            key="idle-1",
            value=orjson.dumps(
                {"event_id": "idle-p1", "customer_id": "idle-1", "ts": idle_ts, "amount": 50.0}
            ),
        )
        producer.flush()
        producer.close()
        first = wait_until(lambda: workers.client.get("idle-1"), 60, "the idle customer's record")
        assert first["lifecycle"] == "new" and "lifecycle_new" in first["rule_segments"]

        # Customers of two personas, with traffic ~90 days after the idle customer's purchase.
        personas = tuple(
            p for p in GENERATOR_PERSONAS if p.name in ("Executive Ella", "Loyal Larry")
        )
        # Clean personas (no variation, mixed or switching customers, UTC): this checks that
        # each rule and persona follows behavior, not how well overlapping personas separate
        # (that is `segmenter eval`'s job).
        generator = TrafficGenerator(
            customers=40,
            seed=3,
            start_ms=START,
            personas=personas,
            session_gap_ms=60_000,
            realism=Realism.none(),
        )
        messages = [
            m for _ in range(8) for cid in generator.customer_ids for m in generator.session(cid)
        ]
        sent = send_messages(settings, iter(messages)).events
        wait_until(
            lambda: workers.client.stats().get("events", 0) >= sent + 1, 90, "the persona traffic"
        )

        # Event time moved on by other customers' events alone: the idle customer is at risk.
        def moved() -> dict | None:
            record = workers.client.get("idle-1")
            return record if record and record["lifecycle"] == "at_risk" else None

        record = wait_until(moved, 30, "the idle customer to move to at_risk")
        assert (
            "lifecycle_at_risk" in record["rule_segments"]
            and "lifecycle_new" not in record["rule_segments"]
        )
        assert record["event_ts"] == idle_ts  # no new event of theirs was applied
        assert record["evaluated_at"] >= idle_ts + 60 * DAY_MS
        changes = [
            v for k, v in read_topic(settings, settings.topic("segment-changes")) if k == b"idle-1"
        ]
        entered = [c for c in changes if c["segment"] == "rule:lifecycle_at_risk"]
        assert entered and entered[0]["change"] == "entered"
        assert entered[0]["reason"] == "rule holds as event time passed a threshold"

        # Each customer is matched to their own persona, and to that persona's rule segments.
        wrong = []
        for cid, persona in generator.truth.items():
            r = workers.client.get(cid)
            assert r is not None, cid
            rules = set(r["rule_segments"])
            if persona.name == "Executive Ella":
                ok = {
                    "fashion_shopper",
                    "high_income",
                    "fashion_minded",
                } <= rules and "grocery_shopper" not in rules
            else:
                ok = {"grocery_shopper", "repeat_buyer"} <= rules and "high_income" not in rules
            if r["persona"] != persona.name or not ok:
                wrong.append((cid, persona.name, r["persona"], sorted(rules)))
            assert r["persona_reasons"] and 0.5 <= r["persona_confidence"] <= 1.0
        assert wrong == []
    except BaseException:
        print(workers.log("w0"))
        raise
    finally:
        workers.stop()
