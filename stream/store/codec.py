"""What Redis holds for a record, both ways: the header line, the compressed record, and the
counter hashes read back.

A record is one Redis string: ``<event_ts> <events applied> <cluster id or -> <segments JSON>``,
a newline, then ``z2:`` and the record's JSON as one zstd frame compressed with a trained
dictionary (``record-v2.zdict`` beside this module; ``stream.tools.record_dict`` made it).
Records written before it (``z1:``, deflated with a preset dictionary) are still read.
``stream.store.keys`` documents where each value lives.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import orjson

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # before Python 3.14: the same module, backported
    from backports import zstd

from models.segments import SegmentChange
from models.step import RecordWrite

__all__ = [
    "counts",
    "sum_counts",
    "decode_changes",
    "decode_record",
    "flow_totals",
    "pick_examples",
    "write_args",
    "encode_record",
    "record_value",
    "segment_text",
]

#: A typical record: the preset dictionary ``z1:`` records were deflated with. Frozen: records
#: written with it are still read.
_ZDICT_V1 = orjson.dumps(
    {
        "customer_id": "cust-000000-000000",
        "segment": 3,
        "segment_label": "high value, frequent, mobile",
        "confidence": 0.8123,
        "persona": "Loyal Larry",
        "persona_confidence": 0.7321,
        "persona_reasons": [
            "avg_order_value near 120.00 (persona) vs 118.52",
            "conversion near 0.90 (persona) vs 0.50",
            "cart_abandonment near 0.07 (persona) vs 0.00",
        ],
        "rule_segments": [
            "cart_abandoner",
            "dach",
            "europe",
            "high_income",
            "lifecycle_active",
            "mobile_first",
            "repeat_buyer",
            "tech_shopper",
            "vip",
            "young_adult",
        ],
        "lifecycle": "active",
        "model_version": 12,
        "event_ts": 1795000000000,
        "evaluated_at": 1795000000000,
        "updated_at": 1795000000000,
        "events_applied": 120,
        "features": {
            "orders_total": 2,
            "revenue_total": 1234.56,
            "first_seen_ts": 1786360000000,
            "last_seen_ts": 1795000000000,
            "last_purchase_ts": 1795000000000,
            "recency_days": 1.2345,
            "frequency_decayed": 0.8765,
            "monetary_decayed": 123.45,
            "avg_order_value": 123.45,
            "avg_viewed_price": 67.89,
            "sessions": 4,
            "page_views": 12,
            "product_views": 8,
            "searches": 2,
            "cart_adds": 1,
            "cart_abandonment": 0.25,
            "views_per_session": 3.5,
            "clicks": 20,
            "top_categories": ["electronics", "fashion", "home", "grocery", "books"],
            "top_spend_categories": ["electronics", "fashion"],
            "primary_device": "mobile",
            "country": "DE",
            "channel": "search",
            "mobile_share": 0.5,
            "desktop_share": 0.5,
            "tablet_share": 0.0,
            "evening_share": 0.5,
            "morning_share": 0.25,
            "afternoon_share": 0.25,
            "search_share": 0.1,
            "discount_share": 0.1,
            "conversion": 0.5,
        },
        "facts": {
            "lifecycle": "active",
            "rfm_score": "511",
            "value_tier": "bronze",
            "customer_value_estimate": 1234.56,
            "region": "Western Europe",
            "age_band": "45-54",
            "top_category": "electronics",
            "days_since_last_purchase": 12.5,
        },
        "traits": {"age": 45, "income_band": "high", "country": "DE", "company_size": "1-10"},
        "worker_id": "worker-000000",
    }
)
_PREFIX_V1 = b"z1:"
_PACKER = zlib.compressobj(6, zlib.DEFLATED, -12, 4, zlib.Z_DEFAULT_STRATEGY, _ZDICT_V1)
#: The zstd dictionary ``z2:`` records are compressed with: 4 KB trained on records of
#: generator traffic (``stream.tools.record_dict``). Frozen: a record written with it must stay
#: readable, so a new dictionary needs a new prefix (``z3:``), never an edit.
_ZSTD_DICT_V2 = zstd.ZstdDict(Path(__file__).with_name("record-v2.zdict").read_bytes())
_RECORD_PREFIX = b"z2:"
# Level 3 (zstd's default): on records of the dictionary's own traffic 4.0 µs and 165 B
# against level 1's 3.7 µs and 177 B and level 6's 15 µs and 147 B (a first measurement); on
# held-out records 190 B (stream.tools.record_dict compare, README).
_COMPRESSOR = zstd.ZstdCompressor(level=3, zstd_dict=_ZSTD_DICT_V2)


def deflate_v1(body: bytes) -> bytes:
    """``body`` as a ``z1:`` record held it (raw deflate, preset dictionary), without the
    prefix: what records were before ``z2:``, kept to read them and to compare."""
    packer = _PACKER.copy()  # primed with the dictionary once: copying is cheaper
    return packer.compress(body) + packer.flush()


def zstd_v2(body: bytes) -> bytes:
    """``body`` as a ``z2:`` record holds it (one zstd frame, the trained dictionary), without
    the prefix."""
    return cast(bytes, _COMPRESSOR.compress(body, mode=zstd.ZstdCompressor.FLUSH_FRAME))


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record as Redis holds it: ``z2:`` and its JSON compressed with zstd and a trained
    dictionary of typical records.

    About 4 µs and 190 B for a held-out generator record of 1.5 KB, against about 30 µs and
    385 B deflated (``z1:``; README, "Output contracts"). ``decode_record`` reverses it.

    >>> decode_record(encode_record({"customer_id": "c-1", "segment": 3}))
    {'customer_id': 'c-1', 'segment': 3}
    """
    return _RECORD_PREFIX + zstd_v2(orjson.dumps(record))


def record_value(write: RecordWrite) -> tuple[bytes, bytes]:
    """What Redis holds for a write, and its segments as JSON (the write script's ARGV).

    One line of plain text, ``<event_ts> <events applied> <cluster id or -> <segments JSON>``,
    then the record as ``encode_record`` gives it. The first line is what the write script
    compares and counts, and what a reader that needs only the segments reads.

    >>> value, m = record_value(RecordWrite("c-1", 1795000000000, 7, 3, {"segment": 3},
    ...                                     ("rule:vip", "cluster:3")))
    >>> value.split(b"\\n", 1)[0]
    b'1795000000000 7 3 ["cluster:3","rule:vip"]'
    >>> decode_record(value)
    {'segment': 3}
    """
    members = orjson.dumps(sorted(write.members))
    head = f"{write.event_ts} {write.applied} {segment_text(write.segment)} ".encode()
    return head + members + b"\n" + encode_record(write.record), members


def write_args(write: RecordWrite) -> tuple[Any, ...]:
    """One write's arguments in the write script's ARGV (``stream.store.scripts.WRITE``:
    ``WRITE_ARGS`` of them).

    >>> from stream.store.scripts import WRITE_ARGS
    >>> args = write_args(RecordWrite("c-1", 5, 2, None, {"evaluated_at": 9}, ("rule:a",)))
    >>> args[5:], len(args) == WRITE_ARGS
    ((9, 'c-1'), True)
    """
    value, segments = record_value(write)
    evaluated_at = int(write.record.get("evaluated_at") or write.event_ts)
    return (
        write.event_ts,
        write.applied,
        segment_text(write.segment),
        value,
        segments,
        evaluated_at,
        write.customer_id,
    )


def decode_changes(
    customer_id: str, lines: bytes | str | None, limit: int | None = None
) -> list[dict[str, Any]]:
    """A customer's recent segment changes (their field of ``Keys.changes``: one line per
    changing write, newest first) as dicts, newest first, each with the ``change_id``
    ``segment-changes`` gives the same change; ``limit`` lines at most.

    >>> decode_changes("c", b'9 5 ["-rule:a","+rule:b"]')  # doctest: +NORMALIZE_WHITESPACE
    [{'at': 9, 'events_applied': 5, 'segment': 'rule:a', 'change': 'exited',
      'change_id': '7d2e4952ac70b58fe0d037a8'},
     {'at': 9, 'events_applied': 5, 'segment': 'rule:b', 'change': 'entered',
      'change_id': 'eb8a8d6d6c46f2f81f2e7e6b'}]
    """
    out: list[dict[str, Any]] = []
    for entry in _text(lines).split("\n")[:limit] if lines else ():
        at, applied, moves = entry.split(" ", 2)
        for move in orjson.loads(moves):
            change = "entered" if move[0] == "+" else "exited"
            key = SegmentChange(
                customer_id, move[1:], change, None, None, 0, "", None, int(applied), int(at)
            )
            out.append(
                {
                    "at": int(at),
                    "events_applied": int(applied),
                    "segment": move[1:],
                    "change": change,
                    "change_id": key.change_id,
                }
            )
    return out


def flow_totals(flows: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """The summed ``flows`` hashes as (entered, exited) totals per segment.

    >>> flow_totals({"in:rule:a": 3, "out:rule:a": 1, "in:cluster:2": 1})
    ({'cluster:2': 1, 'rule:a': 3}, {'rule:a': 1})
    """
    entered = {k[3:]: v for k, v in sorted(flows.items()) if k.startswith("in:")}
    exited = {k[4:]: v for k, v in sorted(flows.items()) if k.startswith("out:")}
    return dict(sorted(entered.items())), dict(sorted(exited.items()))


def pick_examples(found: Iterable[bytes | str | None], limit: int) -> list[str]:
    """Up to ``limit`` example members from the shards' ``examples`` fields of one segment
    (shard 0 first; None where a shard has none).

    >>> pick_examples([b'["c-1","c-9"]', None, b'["c-4"]'], 2)
    ['c-1', 'c-9']
    """
    out: list[str] = []
    for raw in found:
        if raw:
            out.extend(orjson.loads(raw)[: limit - len(out)])
        if len(out) >= limit:
            break
    return out


def decode_record(raw: bytes) -> dict[str, Any]:
    """The record from what Redis holds (``record_value``, or ``encode_record`` alone).

    >>> decode_record(b'{"segment": 2}')
    Traceback (most recent call last):
    ...
    ValueError: not a segmenter record (no z2: or z1: prefix): b'{"segment": 2}'
    """
    if raw[:1].isdigit():
        raw = raw.split(b"\n", 1)[-1]
    if raw.startswith(_RECORD_PREFIX):
        body = zstd.decompress(raw[len(_RECORD_PREFIX) :], zstd_dict=_ZSTD_DICT_V2)
    elif raw.startswith(_PREFIX_V1):  # written before z2: read as it is, rewritten on change
        body = zlib.decompressobj(-12, _ZDICT_V1).decompress(raw[len(_PREFIX_V1) :])
    else:
        raise ValueError(f"not a segmenter record (no z2: or z1: prefix): {raw[:32]!r}")
    return cast(dict[str, Any], orjson.loads(body))


def segment_text(segment: object) -> str:
    """A cluster id as the header line and the ``sizes`` hash hold it (``-``: none yet).

    >>> segment_text(3), segment_text(None)
    ('3', '-')
    """
    return "-" if segment is None else str(segment)


def _text(value: bytes | str) -> str:
    """A hash field or key from Redis as text."""
    return value.decode() if isinstance(value, bytes) else value


def counts(raw: Mapping[Any, Any], positive: bool = True) -> dict[str, int]:
    """A counter hash from Redis as ``{field: count}``; with ``positive``, only counts above 0
    (a segment everyone left keeps its field at 0).

    >>> counts({b"2": b"1", b"3": b"0"})
    {'2': 1}
    """
    found = {_text(k): int(v) for k, v in raw.items()}
    return {k: v for k, v in found.items() if v > 0} if positive else found


def sum_counts(hashes: Iterable[Mapping[Any, Any]], positive: bool = True) -> dict[str, int]:
    """Counter hashes (the shards of ``sizes`` or ``members``) summed field by field; with
    ``positive``, only sums above 0.

    >>> sum_counts([{b"2": b"1", b"3": b"1"}, {b"2": b"2", b"3": b"-1"}, {}])
    {'2': 3}
    """
    total: dict[str, int] = {}
    for raw in hashes:
        for k, v in raw.items():
            field = _text(k)
            total[field] = total.get(field, 0) + int(v)
    return {k: v for k, v in total.items() if v > 0} if positive else total
