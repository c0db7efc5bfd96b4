"""Live definitions, the pure parts: validation, versions in records and changes, the switch."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from models.features import CustomerProfile
from models.segments import SegmentCatalog, SegmentChange, assign
from stream.catalog import CatalogError, file_version, load_segments
from stream.definitions import PublishedDefinitions, publish_definitions
from stream.settings import Settings
from stream.worker.app import build_catalog
from stream.worker.definitions import LiveDefinitions

GOOD = "segments:\n  buyer:\n    when: {orders_total: {gte: 1}}\n"
BAD = "segments:\n  buyer:\n    when: {ordrs_total: {gte: 1}}\n"


def _published(version: int, text: str = GOOD) -> PublishedDefinitions:
    return PublishedDefinitions("segments", version, file_version(text), text, "s.yaml", 0)


def test_a_bad_file_is_refused_before_anything_is_sent(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    # No broker at this address: the error comes from the validation, not from Kafka.
    settings = Settings(kafka_url="kafka://127.0.0.1:1", connect_timeout=0.1)
    with pytest.raises(CatalogError, match=r"bad.yaml: segment 'buyer' \(line 2\).*ordrs_total"):
        publish_definitions(settings, "segments", bad)


def test_published_text_compiles_like_a_file_and_the_catalog_carries_the_version():
    assert [r.name for r in load_segments(text=GOOD)] == ["buyer"]
    catalog = build_catalog(Settings(), {"segments": _published(4)})
    assert catalog.version == 4 and [r.name for r in catalog.rules] == ["buyer"]
    assert build_catalog(Settings()).version == 0


def test_records_and_changes_carry_the_definitions_version():
    profile = CustomerProfile("c", 1, first_seen_ts=0, last_seen_ts=0)
    a = assign(profile, None, SegmentCatalog(version=7))
    assert a.record(profile, 0)["definitions_version"] == 7
    change = SegmentChange("c", "rule:vip", "entered", False, True, 5, "r", 1, 9, 5, 7)
    assert change.to_dict()["definitions_version"] == 7
    assert SegmentChange.from_dict(change.to_dict()) == change
    unversioned = SegmentChange("c", "rule:vip", "entered", False, True, 5, "r", 1, 9, 5)
    assert unversioned.change_id == "28062bd860d33bcb520b6048"  # as before live definitions
    assert change.change_id != unversioned.change_id


class _Reader:
    def __init__(self) -> None:
        self.pending: list[PublishedDefinitions] = []

    def read_new(self) -> list[PublishedDefinitions]:
        out, self.pending = self.pending, []
        return out


def _live(reader: _Reader) -> tuple[LiveDefinitions, SimpleNamespace]:
    step = SimpleNamespace(catalog=None, use_catalog=lambda c: setattr(step, "catalog", c))
    seg = SimpleNamespace(step=step, lock=asyncio.Lock(), owned_partitions=lambda: set())
    live = LiveDefinitions(
        seg,  # type: ignore[arg-type]
        reader,  # type: ignore[arg-type]
        {},
        lambda published: build_catalog(Settings(), published),
        rate=0,
    )
    return live, step


def test_the_worker_switches_to_a_newer_set_and_keeps_its_own_when_one_does_not_compile():
    reader = _Reader()
    live, step = _live(reader)
    assert live.status()["version"] == 0 and live.status()["complete"]
    reader.pending = [_published(1)]
    asyncio.run(live.refresh())
    assert live.version == 1 and step.catalog.version == 1
    assert live.status()["segments"]["text"] == GOOD
    reader.pending = [_published(2, BAD)]
    asyncio.run(live.refresh())
    assert live.version == 1 and step.catalog.version == 1 and 2 in live.refused
