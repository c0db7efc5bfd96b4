"""Records in Redis: ``z2:`` (zstd, a trained dictionary) written, ``z1:`` (deflate) still read."""

from __future__ import annotations

import orjson
import pytest

from stream.store.codec import _PREFIX_V1, decode_record, deflate_v1, encode_record
from stream.tools.record_dict import HELD_OUT_SEEDS, TRAIN_SEEDS, records


def test_a_record_round_trips_and_is_written_as_z2() -> None:
    record = {"customer_id": "c-1", "segment": 3, "persona": "Bargain Ben", "features": {"x": 1.5}}
    raw = encode_record(record)
    assert raw.startswith(b"z2:")
    assert decode_record(raw) == record
    assert decode_record(b"123 4 3 []\n" + raw) == record  # after the header line too


def test_a_record_written_before_z2_is_still_read() -> None:
    record = {"customer_id": "c-1", "segment": 3, "rule_segments": ["vip"]}
    old = _PREFIX_V1 + deflate_v1(orjson.dumps(record))
    assert decode_record(old) == record
    assert decode_record(b"1 1 3 []\n" + old) == record


def test_records_the_dictionary_was_not_trained_on_take_half_the_bytes_of_deflate() -> None:
    assert not set(HELD_OUT_SEEDS) & set(TRAIN_SEEDS)
    bodies = records(HELD_OUT_SEEDS[0], events=10_000, customers=400)
    assert len(bodies) > 250
    z1 = sorted(len(deflate_v1(b)) for b in bodies)
    z2 = sorted(len(encode_record(orjson.loads(b))) - 3 for b in bodies)
    # the medians at 30k events of seeds 1 and 2: 190 B and 385 B
    assert z2[len(z2) // 2] < 0.6 * z1[len(z1) // 2]
    assert z2[-1] < z1[-1]


def test_anything_else_is_refused() -> None:
    with pytest.raises(ValueError, match="no z2: or z1: prefix"):
        decode_record(b"z9:abc")
