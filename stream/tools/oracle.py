"""An independent computation of the canonical value features, straight from the raw events,
and a recount of the size and membership counters from the records themselves: what the soak
(``segmenter soak``) and the integration tests check the store against."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from stream.store import SegmentClient
from stream.tools.generator import Message

__all__ = ["expected_value_features", "feature_mismatches", "recount", "recount_records"]


def _ts(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def expected_value_features(messages: Iterable[Message]) -> dict[str, dict[str, Any]]:
    """Each customer's canonical value features over ``messages`` (an event counted once per
    ``event_id``).

    >>> m = [Message("purchases", "c", {"event_id": "e1", "customer_id": "c", "ts": 5,
    ...      "amount": 2.5})] * 2
    >>> expected_value_features(m)["c"]["orders_total"]
    1
    """
    seen: dict[str, set[str]] = {}
    out: dict[str, dict[str, Any]] = {}
    for message in messages:
        events = message.value if isinstance(message.value, list) else [message.value]
        for e in events:
            cid = e["customer_id"]
            ids = seen.setdefault(cid, set())
            if e["event_id"] in ids:
                continue
            ids.add(e["event_id"])
            f = out.setdefault(
                cid,
                {
                    "orders_total": 0,
                    "revenue_total": 0.0,
                    "first_seen_ts": None,
                    "last_seen_ts": None,
                    "last_purchase_ts": None,
                },
            )
            ts = _ts(e["ts"])
            f["first_seen_ts"] = ts if f["first_seen_ts"] is None else min(f["first_seen_ts"], ts)
            f["last_seen_ts"] = ts if f["last_seen_ts"] is None else max(f["last_seen_ts"], ts)
            if message.source == "purchases":
                f["orders_total"] += 1
                f["revenue_total"] += e["amount"]
                f["last_purchase_ts"] = (
                    ts if f["last_purchase_ts"] is None else max(f["last_purchase_ts"], ts)
                )
    return out


def feature_mismatches(client: Any, expected: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Customers whose record's canonical features differ from ``expected``: id -> (got, want).

    A customer with no record counts as a mismatch (got None). Revenue compares to 6 places.
    """
    out: dict[str, Any] = {}
    for cid, features in expected.items():
        record = client.get(cid)
        if record is None:
            out[cid] = (None, features)
            continue
        got = {k: record["features"][k] for k in features}
        got["revenue_total"] = round(got["revenue_total"], 6)
        want = {**features, "revenue_total": round(features["revenue_total"], 6)}
        if got != want:
            out[cid] = (got, want)
    return out


def recount(client: SegmentClient) -> tuple[dict[str, int], dict[str, int]]:
    """Cluster sizes and segment memberships counted from the records in the store."""
    return recount_records(client.iter_records())


def recount_records(records: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """Cluster sizes and segment memberships counted from these records themselves.

    >>> recount_records([{"segment": 2, "persona": None, "rule_segments": ["vip"]}])
    ({'2': 1}, {'rule:vip': 1, 'cluster:2': 1})
    """
    sizes: dict[str, int] = {}
    members: dict[str, int] = {}
    for r in records:
        seg = "-" if r["segment"] is None else str(r["segment"])
        sizes[seg] = sizes.get(seg, 0) + 1
        names = [f"rule:{name}" for name in r["rule_segments"]]
        names += [] if r["segment"] is None else [f"cluster:{r['segment']}"]
        names += [] if r["persona"] is None else [f"persona:{r['persona']}"]
        for name in names:
            members[name] = members.get(name, 0) + 1
    return sizes, members
