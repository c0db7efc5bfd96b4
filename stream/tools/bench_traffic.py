"""The bench's traffic and statistics: generated clickstreams shaped into one event per
message or arrays of exactly 10 events of one customer, and percentiles."""

from __future__ import annotations

from typing import Any

from stream.tools.generator import Message, TrafficGenerator

__all__ = ["as_arrays", "as_singles", "click_streams", "percentile"]


def click_streams(customers: int, events: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """About ``events`` generated clickstream events, per customer in event-time order."""
    generator = TrafficGenerator(customers=customers, seed=seed, arrays=False)
    per: dict[str, list[dict[str, Any]]] = {}
    total = 0
    while total < events:
        for message in generator.session(generator.pick()):
            if message.source == "clickstream":
                per.setdefault(message.key, []).append(message.value)  # type: ignore[arg-type]
                total += 1
    return per


def as_singles(per: dict[str, list[dict[str, Any]]], events: int) -> list[Message]:
    """One event per message, customers interleaved (each customer's events in order)."""
    out: list[Message] = []
    queues = {cid: iter(evs) for cid, evs in per.items()}
    while queues and len(out) < events:
        for cid in list(queues):
            event = next(queues[cid], None)
            if event is None:
                del queues[cid]
            else:
                out.append(Message("clickstream", cid, event))
    return out[:events]


def as_arrays(per: dict[str, list[dict[str, Any]]], events: int, size: int = 10) -> list[Message]:
    """Arrays of exactly ``size`` events of one customer per message (the generator's own
    arrays are a session's clicks, of any length), customers interleaved."""
    chunks = {
        cid: [evs[i : i + size] for i in range(0, len(evs) - size + 1, size)]
        for cid, evs in per.items()
    }
    out: list[Message] = []
    while chunks and len(out) * size < events:
        for cid in list(chunks):
            if not chunks[cid]:
                del chunks[cid]
            else:
                out.append(Message("clickstream", cid, chunks[cid].pop(0)))
    return out[: events // size]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank from below); NaN when empty.

    >>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5), percentile([], 0.5)
    (3.0, nan)
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
