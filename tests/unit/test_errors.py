"""One root exception: what the segmenter reports to its user by design is a SegmenterError."""

from __future__ import annotations

import pytest

from stream.catalog import CatalogError
from stream.errors import SegmenterError
from stream.kafka import BrokerUnavailable
from stream.store import StoreUnavailable
from stream.tools.embedded import EmbeddedError
from stream.tools.producer import ReplayError


@pytest.mark.parametrize(
    "leaf", [BrokerUnavailable, CatalogError, ReplayError, EmbeddedError, StoreUnavailable]
)
def test_each_leaf_is_a_segmenter_error(leaf: type[Exception]) -> None:
    assert issubclass(leaf, SegmenterError) and leaf is not SegmenterError
    with pytest.raises(SegmenterError, match="where and why"):
        raise leaf("where and why")


def test_the_catalog_and_the_replay_raise_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from stream.catalog import load_segments
    from stream.tools.producer import read_events_file

    with pytest.raises(SegmenterError, match="no such file"):
        load_segments(tmp_path / "missing.yaml")
    bad = tmp_path / "events.jsonl"
    bad.write_text('{"customer_id": "c-1"}\nnot json\n')
    with pytest.raises(SegmenterError, match=r"events.jsonl:2: not JSON"):
        list(read_events_file(bad))
