"""Segment definitions changed live (`segmenter segments apply`), on the real broker and Redis:
the worker switches, re-evaluates every customer in the background, and live traffic flows."""

from __future__ import annotations

import threading
from collections import defaultdict

import orjson
import pytest

from models.rules import evaluate_all
from stream.catalog import load_segments
from stream.definitions import read_definitions
from stream.kafka import make_producer, read_topic
from stream.serving.report import definitions_status
from stream.tools.generator import TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, run_cli, wait_until

pytestmark = pytest.mark.integration

START = 1_795_000_000_000

#: ``vip`` edited (one tier instead of two), ``big_spender`` new, ``repeat_buyer`` as built in;
#: every other built-in rule removed. Each reads only facts the record holds, so the test can
#: evaluate them itself.
NEW_SEGMENTS = """\
segments:
  vip:
    kind: value
    description: Top spend quintile among buyers
    when: {value_tier: {in: [platinum]}}
  big_spender:
    kind: value
    description: Spent 300 or more
    when: {revenue_total: {gte: 300}}
  repeat_buyer:
    kind: value
    when: {orders_total: {gte: 2}}
"""

BAD_SEGMENTS = """\
segments:
  vip:
    kind: value
    when: {value_tier: {in: [platinum]}}
  big_spender:
    kind: value
    when: {revenue_totl: {gte: 300}}
"""


def _facts(record: dict) -> dict:
    return {**record["features"], **{k: v for k, v in record["facts"].items() if v is not None}}


@pytest.mark.parametrize(
    "child",
    [
        pytest.param(True, id="child-process"),  # the default
        # SEGMENTER_BACKFILL_PROCESS=false: the same checks, in make test-slow (make test's time)
        pytest.param(False, id="in-worker", marks=pytest.mark.slow),
    ],
)
def test_apply_switches_backfills_and_keeps_live_traffic_flowing(stack, tmp_path, child):
    settings = make_settings(stack, partitions=2, backfill_rate=300.0, backfill_process=child)
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        generator = TrafficGenerator(customers=400, seed=5, start_ms=START, session_gap_ms=60_000)
        messages = [
            m for _ in range(3) for cid in generator.customer_ids for m in generator.session(cid)
        ]
        sent = send_messages(settings, iter(messages)).events
        client = workers.client
        wait_until(lambda: client.stats().get("events", 0) >= sent, 90, "the traffic")
        before = {r["customer_id"]: r for r in client.iter_records()}
        assert len(before) == 400 and {r["definitions_version"] for r in before.values()} == {0}

        # A bad file: exit 2, one line naming the file, the segment and the line; nothing sent.
        bad = tmp_path / "bad.yaml"
        bad.write_text(BAD_SEGMENTS)
        refused = run_cli(settings, "segments", "apply", str(bad))
        assert refused.returncode == 2, refused.stderr
        message = " ".join(refused.stderr.split())
        assert str(bad) in message and "'big_spender'" in message and "line 5" in message
        assert "revenue_totl" in message
        assert read_definitions(settings) == {}

        # Live traffic while the worker re-evaluates everyone (300 customers a second here),
        # flowing before the apply, so that it is there when the backfill begins however slow
        # the machine is to start the sender.
        live = TrafficGenerator(customers=20, seed=9, start_ms=START + 3_600_000)
        stop = threading.Event()
        live_sent = [0]
        live_ids: set[str] = set()

        def send_live() -> None:
            producer = make_producer(settings)
            while not stop.is_set():
                cid = live.customer_ids[
                    len(live_ids) % 20 if len(live_ids) < 20 else live_sent[0] % 20
                ]
                live_ids.add(cid)
                for m in live.session(cid):
                    topic = settings.topic(m.source)
                    producer.send(topic, key=m.key, value=orjson.dumps(m.value))
                    live_sent[0] += m.events
                producer.flush()
                stop.wait(0.05)
            producer.close()

        sender = threading.Thread(target=send_live)
        sender.start()
        try:
            wait_until(lambda: client.stats().get("events", 0) > sent, 60, "the first live events")
            good = tmp_path / "segments-v2.yaml"
            good.write_text(NEW_SEGMENTS)
            applied = run_cli(settings, "segments", "apply", str(good))
            assert applied.returncode == 0, applied.stderr
            assert "definitions version 1" in applied.stderr
            status = wait_until(
                lambda: (s := definitions_status(client.workers()))["complete"] == 1 and s,
                60,
                "the worker to switch to version 1 and re-evaluate everyone",
            )
        finally:
            stop.set()
            sender.join()
        assert isinstance(status, dict)
        backfill = client.workers()[0]["definitions"]["backfill"]
        # Everyone stored when it began (live customers too, if their events came first).
        assert backfill["total"] >= 400 and backfill["done"] == backfill["total"]
        assert backfill["live_events"] > 0  # batches ran between the chunks
        assert backfill["scored_in"] == ("a child process" if child else "the worker")
        assert status["in_force"]["segments"]["version"] == 1
        wait_until(
            lambda: client.stats().get("events", 0) >= sent + live_sent[0], 60, "the live events"
        )

        # Every record carries version 1 (every customer held a built-in rule the new set drops,
        # so the backfill moved and rewrote every one) and exactly the new rules' memberships.
        rules = load_segments(good)
        records = {r["customer_id"]: r for r in client.iter_records()}
        assert len(records) == 400 + len(live_ids)
        wrong = [
            (cid, r["rule_segments"])
            for cid, r in records.items()
            if r["definitions_version"] != 1 or r["rule_segments"] != evaluate_all(rules, _facts(r))
        ]
        assert wrong == []
        assert any("big_spender" in r["rule_segments"] for r in records.values())

        # segment-changes: folding every rule change gives each record's memberships; the
        # removed and edited rules' exits carry version 1 and say why.
        held: dict[str, set[str]] = defaultdict(set)
        by_version: dict[str, list[dict]] = defaultdict(list)
        exits: dict[str, list[dict]] = defaultdict(list)
        for _key, change in read_topic(settings, settings.topic(settings.changes_topic)):
            if change is None or not change["segment"].startswith("rule:"):
                continue
            name = change["segment"][5:]
            if change["change"] == "entered":
                held[change["customer_id"]].add(name)
            else:
                held[change["customer_id"]].discard(name)
                exits[change["customer_id"]].append(change)
            if change["definitions_version"] == 1:
                by_version[change["customer_id"]].append(change)
        assert {c: sorted(held[c]) for c in records} == {
            c: sorted(r["rule_segments"]) for c, r in records.items()
        }
        # Every rule a customer left since the snapshot has its exit: under version 1, or
        # under version 0 at a due time the live traffic's event time reached before the switch.
        for cid, old in before.items():
            gone = set(old["rule_segments"]) - set(records[cid]["rule_segments"])
            left = {
                c["segment"][5:] for c in exits[cid] if c["evaluated_at"] >= old["evaluated_at"]
            }
            assert gone <= left, cid
        assert sum(len(cs) for cs in by_version.values()) > 0
        reasons = {c["reason"] for cs in by_version.values() for c in cs}
        assert "rule no longer holds under new segment definitions" in reasons

        # The report shows the rules in force and the version.
        report = run_cli(settings, "segments", "--json")
        assert report.returncode == 0, report.stderr
        shown = orjson.loads(report.stdout)
        assert shown["definitions"]["version"] == 1
        rule_rows = {r["segment"] for r in shown["segments"] if r["kind"] == "value"}
        assert rule_rows == {"vip", "big_spender", "repeat_buyer"}
    except BaseException:
        print(workers.log("w0"))
        raise
    finally:
        workers.stop()
