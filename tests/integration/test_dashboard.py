"""Sizes over time, drift, /metrics, the read API and the dashboard in a real headless Chromium.

One worker runs for the whole module. Generated traffic first follows the personas' usual mix;
then the generator switches to mostly Bargain Ben, and drift alerts must follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from types import ModuleType
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import pytest

from models.step import RecordWrite
from stream.catalog import load_segments
from stream.kafka import read_topic
from stream.serving.definitions import file_version
from stream.serving.lookup import fact_value
from stream.serving.web import DashboardServer
from stream.settings import Settings
from stream.store import RedisSegmentStore, SegmentClient
from stream.tools.embedded import EmbeddedStack, free_port
from stream.tools.generator import TrafficGenerator
from stream.tools.producer import generated_messages, send_messages

from .conftest import Workers, make_settings, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Running:
    settings: Settings
    workers: Workers
    client: SegmentClient
    generator: TrafficGenerator
    dashboard: DashboardServer
    sent: list[int]
    shift_at: int | None = None

    def produce(self, events: int, rate: float = 4000) -> None:
        stats = send_messages(
            self.settings, generated_messages(self.generator), rate=rate, max_events=events
        )
        self.sent.append(stats.events)

    def processed(self) -> int:
        return self.client.stats().get("events", 0)

    def settled(self) -> None:
        """Every event sent so far is processed (records and counters stand still)."""
        wait_until(lambda: self.processed() >= sum(self.sent), 120, "all traffic processed")

    def api(self, path: str, status: int = 200) -> Any:
        got = httpx.get(self.dashboard.url.rstrip("/") + path)
        assert got.status_code == status, got.text
        return got.json()

    def force_change(self) -> int:
        """Once per module: from now on 90% of sessions are Bargain Ben's; returns the event
        time of the switch. Whichever test needs the change first makes it (the browser test
        while its page is open), so no test depends on another having run."""
        if self.shift_at is None:
            self.shift_at = self.generator.clock
            self.generator.shift({"Bargain Ben": 0.9})
            self.produce(40_000)
        return self.shift_at


@pytest.fixture(scope="module")
def running(stack, tmp_path_factory) -> Iterator[Running]:  # type: ignore[no-untyped-def]
    settings = make_settings(
        stack,
        metrics_port=free_port(),
        stats_interval=0.5,
        stats_bucket_seconds=60,
        drift_warmup_samples=3000,
        drift_cooldown_samples=2000,
    )
    workers = Workers(settings, tmp_path_factory.mktemp("dashboard"))
    dashboard = DashboardServer(settings, "127.0.0.1", free_port())
    dashboard.start()
    run = Running(
        settings,
        workers,
        SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix),
        TrafficGenerator(customers=600, seed=11),
        dashboard,
        [],
    )
    try:
        workers.start(1)
        workers.wait_joined(1)
        run.produce(60_000)  # the usual mix: a model, then enough samples past drift warm-up
        wait_until(lambda: run.processed() >= sum(run.sent), 120, "the first traffic processed")
        yield run
    finally:
        dashboard.stop()
        workers.stop()
        run.client.close()


def playwright_or_skip() -> ModuleType:
    """Playwright's sync API, once Chromium is there too; else skip the browser test, or fail
    it when ``SEGMENTER_REQUIRE_BROWSER`` is set (CI: a missing browser is not a pass)."""

    def missing(what: str) -> NoReturn:
        if os.environ.get("SEGMENTER_REQUIRE_BROWSER"):
            pytest.fail(f"{what}, and SEGMENTER_REQUIRE_BROWSER is set (CI runs the browser test)")
        pytest.skip(what)

    try:
        sync_api = importlib.import_module("playwright.sync_api")
    except ImportError:
        missing("Playwright is not installed (the dev extra: pip install -e '.[dev]')")
    if not os.path.exists(CHROMIUM):
        missing(f"no Chromium at {CHROMIUM} (make browser: apt-get install chromium)")
    return sync_api


@contextlib.contextmanager
def chromium_page(playwright: ModuleType) -> Iterator[tuple[Any, list[str]]]:
    """A page in headless Chromium, and the console errors and page errors it logs."""
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def _share_alerts(client: SegmentClient) -> list[dict]:
    return [a for a in client.drift() if a["kind"] == "segment_share"]


def test_the_dashboard_shows_live_sizes_and_a_drift_alert_after_a_forced_change(running):
    playwright = playwright_or_skip()
    with chromium_page(playwright) as (page, errors):
        page.goto(running.dashboard.url)
        page.wait_for_function(
            "Number(document.getElementById('chart').dataset.points) >= 3", timeout=20_000
        )
        assert int(page.locator("#chart").get_attribute("data-series") or 0) >= 2
        assert page.locator("#segments tbody tr").count() >= 5
        # The forced change: from now on 90% of sessions are Bargain Ben's. The page must
        # show a share alert detected after it (in event time). The young model may already
        # have raised one on the usual mix while it was still learning; that one does not
        # count here (that no alert fires before a change on a stationary stream is the
        # drift golden test's job, tests/unit/test_drift.py).
        shift_at = running.force_change()
        after = "#alerts li.alert[data-kind=segment_share]"
        page.wait_for_function(
            f"""[...document.querySelectorAll("{after}")]
                .some((li) => Number(li.dataset.detected) >= {shift_at})""",
            timeout=90_000,
        )
        fresh = [
            li
            for li in page.locator(after).all()
            if int(li.get_attribute("data-detected") or 0) >= shift_at
        ]
        text = fresh[0].inner_text()
        assert "share of cluster:" in text and ("rose" in text or "fell" in text)
        assert page.locator("#throughput").inner_text() != "-"
        page.screenshot(path=str(running.workers.logdir / "dashboard.png"), full_page=True)
    assert errors == [], errors


def test_size_snapshots_are_kept_per_event_time_bucket_and_published(running):
    history = running.client.history()
    assert len(history) >= 3
    buckets = [h["bucket"] for h in history]
    assert buckets == sorted(set(buckets))
    assert all(b % 60_000 == 0 for b in buckets)
    last = history[-1]
    clusters = sum(n for s, n in last["sizes"].items() if s.startswith("cluster:"))
    personas = sum(n for s, n in last["sizes"].items() if s.startswith("persona:"))
    assert clusters <= last["customers"] and personas == last["customers"]
    published = [
        v for _, v in read_topic(running.settings, running.settings.topic("segment-stats"))
    ]
    assert published and {p["bucket"] for p in published} >= set(buckets[-1:])


def test_drift_alerts_are_published_with_what_how_much_and_since_when(running):
    shift_at = running.force_change()
    wait_until(
        lambda: any(a["detected_at"] >= shift_at for a in _share_alerts(running.client)),
        120,
        "a share alert after the forced change",
    )
    alerts = [v for _, v in read_topic(running.settings, running.settings.topic("segment-drift"))]
    shares = [a for a in alerts if a["kind"] == "segment_share"]
    assert shares
    for a in shares:
        assert a["subject"].startswith("cluster:")
        assert a["magnitude"] == pytest.approx(abs(a["after"] - a["before"]), abs=1e-3)
        assert a["magnitude"] >= running.settings.drift_min_effect
        assert a["since"] <= a["detected_at"]
        assert a["message"]


def test_metrics_count_what_the_worker_did(running):
    shift_at = running.force_change()
    wait_until(lambda: running.processed() >= sum(running.sent), 120, "all traffic processed")
    wait_until(
        lambda: any(a["detected_at"] >= shift_at for a in _share_alerts(running.client)),
        120,
        "a share alert after the forced change",
    )
    url = f"http://127.0.0.1:{running.settings.metrics_port}/metrics"

    def scrape() -> dict[str, float]:
        values: dict[str, float] = {}
        for line in httpx.get(url).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def events(values: dict[str, float]) -> float:
        return sum(v for k, v in values.items() if k.startswith("segmenter_events_total{"))

    # The Redis counters are written before the metrics move: wait until both agree.
    values = wait_until(
        lambda: (v := scrape()) and events(v) == running.processed() and v, 30, "metrics"
    )
    assert isinstance(values, dict)
    assert values["segmenter_batch_seconds_count"] > 0
    assert values["segmenter_event_delay_seconds_count"] > 0
    assert any(k.startswith("segmenter_consumer_lag{") for k in values)
    assert any(k.startswith('segmenter_segment_size{segment="cluster:') for k in values)
    assert values.get('segmenter_drift_alerts_total{kind="segment_share"}', 0) >= 1
    assert values["segmenter_dead_letters_total"] == 0
    assert values["segmenter_model_version"] >= 1


def test_the_read_api_serves_the_same_records_and_describes_itself(running):
    base = running.dashboard.url.rstrip("/")
    customer = running.generator.customer_ids[0]
    got = httpx.get(f"{base}/customers/{customer}")
    assert got.status_code == 200 and got.json() == running.client.get(customer)
    missing = httpx.get(f"{base}/customers/nobody-by-this-name")
    assert missing.status_code == 404 and "nobody-by-this-name" in missing.json()["detail"]
    report = httpx.get(f"{base}/segments").json()
    assert report["customers"] == running.client.customers()
    members = running.client.members()
    for row in report["segments"]:
        if row["kind"] == "persona":
            assert row["customers"] == members.get(f"persona:{row['segment']}", 0)
    spec = httpx.get(f"{base}/openapi.json").json()
    assert {"/customers/{customer_id}", "/segments"} <= set(spec["paths"])


def test_a_token_when_set_is_required(running):
    settings = Settings(**{**running.settings.model_dump(), "api_token": "s3cret-token"})
    server = DashboardServer(settings, "127.0.0.1", free_port())
    server.start()
    try:
        base = server.url.rstrip("/")
        customer = running.generator.customer_ids[0]
        assert httpx.get(f"{base}/customers/{customer}").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(f"{base}/segments", headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret-token"}
        assert httpx.get(f"{base}/customers/{customer}", headers=right).status_code == 200
        assert httpx.get(f"{base}/api/overview", headers=right).status_code == 200
        assert httpx.get(f"{base}/api/customers/{customer}").status_code == 401
        assert httpx.get(f"{base}/api/segments/rule:vip").status_code == 401
        assert httpx.get(f"{base}/api/customers/{customer}", headers=right).status_code == 200
        assert httpx.get(f"{base}/api/segments/rule:vip", headers=right).status_code == 200
    finally:
        server.stop()


SEGMENTS_VERSION = file_version(resources.files("stream").joinpath("segments.yaml").read_text())
RULE_FACTS = {rule.name: sorted(rule.fields) for rule in load_segments()}


def _explained_customer(running: Running) -> str:
    """A customer with a persona and rule segments, one of them on a fact the record does not
    carry (``device_share.*``) if there is one."""
    ids = running.generator.customer_ids
    records = {c: r for c in ids if (r := running.client.get(c)) and r["rule_segments"]}
    for c, r in records.items():
        if r["persona"] and {"mobile_first", "desktop_first"} & set(r["rule_segments"]):
            return c
    return next(iter(records))


def test_the_customer_view_explains_every_segment_and_lists_published_changes(running):
    running.settled()
    customer = _explained_customer(running)
    view = running.api(f"/api/customers/{quote(customer)}")
    record = running.client.get(customer)
    assert view["record"] == record and view["customer_id"] == customer
    assert view["merged_ids"] == [] and view["merged_into"] is None and view["note"] == ""
    wanted = [f"cluster:{record['segment']}"] if record["segment"] is not None else []
    wanted += [f"persona:{record['persona']}"] + [f"rule:{r}" for r in record["rule_segments"]]
    assert [m["segment"] for m in view["segments"]] == wanted
    by_name = {m["segment"]: m for m in view["segments"]}
    persona = by_name[f"persona:{record['persona']}"]
    assert persona["reasons"] == record["persona_reasons"] and persona["reasons"]
    assert persona["confidence"] == record["persona_confidence"]
    for name in record["rule_segments"]:
        rule = by_name[f"rule:{name}"]
        assert rule["definition"].startswith(f"{name}:") and rule["version"] == SEGMENTS_VERSION
        assert [f["fact"] for f in rule["facts"]] == RULE_FACTS[name]
        for f in rule["facts"]:
            assert f == fact_value(record, f["fact"]).model_dump()
            if f["fact"].startswith("device_share."):
                assert f["stored"] is False  # not in the record, and the view says so
    # Recent changes: each is a change published on segment-changes (same change_id), and the
    # newest change kept of each segment agrees with the segments the customer is in now.
    published = {
        v["change_id"]: v
        for k, v in read_topic(running.settings, running.settings.topic("segment-changes"))
        if v and k == customer.encode()
    }
    assert view["changes"]
    for change in view["changes"]:
        sent = published[change["change_id"]]
        assert (sent["segment"], sent["change"], sent["evaluated_at"]) == (
            change["segment"],
            change["change"],
            change["at"],
        )
    newest: dict[str, str] = {}
    for change in view["changes"]:
        newest.setdefault(change["segment"], change["change"])
    assert {s for s, c in newest.items() if c == "entered"} <= set(wanted)
    assert not {s for s, c in newest.items() if c == "exited"} & set(wanted)
    missing = running.api("/api/customers/nobody-by-this-name", 404)
    assert "nobody-by-this-name" in missing["detail"]
    running.api("/api/customers/" + "x" * (running.settings.max_id_length + 1), 422)


def test_the_segment_view_shows_size_flows_definition_and_examples(running):
    running.settled()
    members = running.client.members()
    rule = max((m for m in members if m.startswith("rule:")), key=lambda m: members[m])
    # The newest size snapshot is taken after the traffic settled.
    view = wait_until(
        lambda: (
            (v := running.api(f"/api/segments/{rule}"))["history"][-1]["size"] == members[rule]
            and v
        ),
        30,
        "a size snapshot of the settled sizes",
    )
    assert isinstance(view, dict)
    assert view["segment"] == rule and view["customers"] == members[rule]
    assert view["share"] == round(members[rule] / running.client.customers(), 4)
    assert view["definition"].startswith(f"{rule[5:]}:") and view["version"] == SEGMENTS_VERSION
    assert view["facts"] == RULE_FACTS[rule[5:]]
    history = view["history"]
    assert [b["bucket"] for b in history] == sorted({b["bucket"] for b in history})
    assert all(b["bucket"] % 60_000 == 0 for b in history)
    # Entries and exits per bucket: the size moves by exactly entries minus exits.
    for before, bucket in zip(history, history[1:], strict=False):
        assert bucket["entered"] is not None
        assert bucket["size"] - before["size"] == bucket["entered"] - bucket["exited"]
    assert sum(b["entered"] or 0 for b in history) > 0
    assert view["examples"]
    for example in view["examples"]:
        assert rule[5:] in running.client.get(example)["rule_segments"]
    assert running.api(f"/api/segments/{rule[5:]}")["segment"] == rule  # a bare rule name
    persona = running.api("/api/segments/" + quote("persona:Bargain Ben"))
    assert persona["kind"] == "persona" and persona["definition"].startswith("Bargain Ben:")
    for example in persona["examples"]:
        assert running.client.get(example)["persona"] == "Bargain Ben"
    cluster = running.api("/api/segments/cluster:0")
    assert cluster["kind"] == "cluster" and cluster["version"].startswith("model ")
    assert cluster["customers"] == members.get("cluster:0", 0)
    missing = running.api("/api/segments/rule:no_such_rule", 404)
    assert "no segment 'rule:no_such_rule'" in missing["detail"]
    spec = running.api("/openapi.json")
    for path, model in [
        ("/api/customers/{customer_id}", "CustomerView"),
        ("/api/segments/{segment}", "SegmentView"),
    ]:
        get = spec["paths"][path]["get"]
        assert get["summary"] and "404" in get["responses"]
        assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{model}"
        }


def test_the_page_looks_a_customer_up_and_opens_a_segment(running):
    playwright = playwright_or_skip()
    running.settled()
    customer = _explained_customer(running)
    view = running.api(f"/api/customers/{quote(customer)}")
    rule = f"rule:{view['record']['rule_segments'][0]}"
    with chromium_page(playwright) as (page, errors):
        page.goto(running.dashboard.url)
        page.wait_for_selector(f"#segments tbody tr[data-segment='{rule}']")
        page.fill("#customer-id", customer)
        page.click("#lookup button")
        page.wait_for_function(
            f"document.getElementById('customer').dataset.customer === {json.dumps(customer)}"
        )
        shown = page.locator("#memberships li.membership")
        assert [li.get_attribute("data-segment") for li in shown.all()] == [
            m["segment"] for m in view["segments"]
        ]
        reasons = page.locator("li.membership[data-segment^='persona:'] li.reason")
        assert reasons.all_inner_texts() == view["record"]["persona_reasons"]
        facts = [f for m in view["segments"] for f in m["facts"]]
        assert page.locator("li.fact").count() == len(facts)
        assert page.locator("li.fact[data-stored=false]").count() == sum(
            not f["stored"] for f in facts
        )
        assert page.locator("#changes tr.change").count() == len(view["changes"])
        assert page.locator("#merged-ids").inner_text() == "none"
        page.screenshot(path=str(running.workers.logdir / "customer.png"), full_page=True)
        # A click on a segment row opens the segment view: size, chart, definition, examples.
        page.click(f"#segments tbody tr[data-segment='{rule}']")
        page.wait_for_function(
            f"document.getElementById('segment-view').dataset.segment === {json.dumps(rule)}"
        )
        size = running.client.members()[rule]
        assert page.locator("#segment-size").inner_text() == f"{size:,}"
        assert int(page.locator("#segment-chart").get_attribute("data-points") or 0) >= 2
        assert page.locator("#segment-definition").inner_text().startswith(rule[5:] + ":")
        assert page.locator("#segment-version").inner_text() == SEGMENTS_VERSION
        # An example member opens that customer.
        example = page.locator("#segment-examples a.example").first
        other = example.get_attribute("data-customer")
        example.click()
        page.wait_for_function(
            f"document.getElementById('customer').dataset.customer === {json.dumps(other)}"
        )
        # An unknown id shows the API's answer.
        page.fill("#customer-id", "nobody-by-this-name")
        page.click("#lookup button")
        page.wait_for_function(
            "document.getElementById('customer').textContent.includes('no record for customer')"
        )
        page.screenshot(path=str(running.workers.logdir / "lookup.png"), full_page=True)
    assert [e for e in errors if "status of 404" not in e] == [], errors


def test_the_customer_view_shows_as_many_changes_as_the_workers_keep(stack: EmbeddedStack) -> None:
    """``SEGMENTER_CUSTOMER_CHANGES_KEPT`` above the default: the API shows every change kept,
    not the default's five."""
    kept = 8
    settings = make_settings(stack, customer_changes_kept=kept)
    url = settings.redis_url.get_secret_value()

    async def write() -> None:
        store = RedisSegmentStore(url, settings.redis_prefix, changes_kept=kept)
        try:
            for n in range(1, kept + 4):  # every write enters or leaves rule:x
                members = ("rule:x",) if n % 2 else ()
                record = {"customer_id": "a", "segment": None}
                await store.write_many([RecordWrite("a", n, n, None, record, members)])
            assert len(await store.changes("a")) == kept  # the store reads what it keeps
        finally:
            await store.close()

    asyncio.run(write())
    server = DashboardServer(settings, "127.0.0.1", free_port())
    try:
        server.start(timeout=60.0)
        answer = httpx.get(f"{server.url.rstrip('/')}/api/customers/a", timeout=30.0)
    finally:
        server.stop()
    assert answer.status_code == 200, answer.text
    assert [c["events_applied"] for c in answer.json()["changes"]] == list(range(kept + 3, 3, -1))
