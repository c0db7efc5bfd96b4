"""Identity stitching: an anonymous visitor's profile merged into the known customer's.

A message that names a second id for its customer (an ``identify`` with ``anonymous_id``, an
``alias`` with ``previous_id``, a Segment-spec event with both ``userId`` and ``anonymousId``)
asks for that id's profile to be merged into the customer's. The two ids live on different
partitions, possibly on different workers, so the merge travels through the ``identity`` topic
(co-partitioned with the input topics, keyed by the customer it is addressed to) in three kinds
of message, each a JSON object:

- ``{"op": "merge", "from": A, "into": B, "ts": T}``, keyed by A: written by B's worker when
  it first sees the signal. A's worker handles it in two steps. The cut: A exits every
  segment and keeps its profile, marked merged into B (messages of A from now on are sent on
  to B), and the request goes again to A itself. Once the cut is saved, that copy (or any
  repeat of the request) sends the history the cut holds, leaves only a redirect to B, and
  so answers with
- ``{"op": "state", "from": A, "into": B, "ts": T, "state": {...}}``, keyed by B: A's profile
  state as it was at the merge (null if A was never seen). B's worker folds it into B's
  profile (``absorb``) once: B remembers the ids merged into it (``merged_ids``), so a
  redelivered or repeated state changes nothing.
- ``{"op": "events", "from": A, "into": B, "source": S, "key": K, "value": V}``, keyed by B:
  a message that reached A's worker after the merge (V its value in base64, K its key, S its
  source kind), applied to B as B's own.
- ``{"op": "forget", "from": A, "into": B}``, keyed by A: B was erased (``segmenter forget``),
  and A, merged into B, is erased with it (its redirect, its alias, a tombstone for it).

A redirect forwards whatever reaches it to where it points, so chains (A into B, then B into C)
arrive at the end; the customer at the end writes the aliases of every id merged into it
(``StepOutcome.aliases``), so a read of any of them is one hop from the record. An id joins the
first customer that claims it: a second claim, or one that would make a cycle, is a dead letter
with its reason.

Exactness: the canonical value features of the merged profile are those of the union of both
event logs (an event applied under both ids, found by the recent event-id windows, counts
once). Every step is idempotent under redelivery, and each side's effects are published before
its state is saved, so a crash of either worker mid-merge redoes, never loses, the merge. A's
history is sent only from a saved cut: after a crash before that save, A's messages are read
again from the committed offsets, those of different topics possibly in another interleaving
(an event sent under A after the merge request, read before it), and a history sent at the
first cut would lack what the redone cut holds, while B absorbs A's history once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from models.events import DecodeError
from models.features import (
    MAX_MERGED_IDS,
    RECENT_FLOOR,
    RECENT_HALF_VISITS,
    SESSION_TIMEOUT_MS,
    VISIT_WINDOW,
    CustomerProfile,
    bump,
    trim_pending,
)
from models.session import adopt

__all__ = [
    "IDENTITY",
    "IdentityMessage",
    "MAX_ASKED",
    "absorb",
    "decode_identity",
    "events_message",
    "forget_message",
    "merge_message",
    "redirect_of",
    "state_message",
    "stitch_targets",
]

#: The source kind of the identity topic's messages.
IDENTITY = "identity"
#: Merges asked and not answered that a profile remembers (the oldest are dropped past this).
MAX_ASKED = 20
# Recent event ids kept per kind after a merge: both windows, up to twice the usual length, so
# an event of the merged id redelivered or forwarded soon after still counts once.
_UNITED_WINDOW = 128


class IdentityMessage(NamedTuple):
    """One decoded message of the identity topic (see the module's docstring)."""

    op: str
    source_id: str
    target_id: str
    ts: int
    state: dict[str, Any] | None = None
    source: str | None = None
    key: bytes | None = None
    value: bytes | None = None


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def merge_message(source_id: str, target_id: str, ts: int) -> tuple[bytes, bytes]:
    """The request that ``source_id`` be merged into ``target_id``: (key, value)."""
    body = {"op": "merge", "from": source_id, "into": target_id, "ts": ts}
    return source_id.encode(), _dumps(body)


def forget_message(source_id: str, target_id: str) -> tuple[bytes, bytes]:
    """The erasure of ``source_id``, merged into ``target_id``, which was erased."""
    return source_id.encode(), _dumps(
        {"op": "forget", "from": source_id, "into": target_id, "ts": 0}
    )


def state_message(
    source_id: str, target_id: str, ts: int, state: dict[str, Any] | None
) -> tuple[bytes, bytes]:
    """``source_id``'s state, sent to ``target_id`` to be absorbed: (key, value)."""
    body = {"op": "state", "from": source_id, "into": target_id, "ts": ts, "state": state}
    return target_id.encode(), _dumps(body)


def events_message(
    source_id: str, target_id: str, source: str, key: bytes | None, value: bytes | None
) -> tuple[bytes, bytes]:
    """A message of ``source_id`` that arrived after its merge, sent on to ``target_id``."""
    body = {
        "op": "events",
        "from": source_id,
        "into": target_id,
        "ts": 0,
        "source": source,
        "key": None if key is None else key.decode("utf-8", "replace"),
        "value": base64.b64encode(value or b"").decode(),
    }
    return target_id.encode(), _dumps(body)


def decode_identity(
    value: bytes | None, key: bytes | None, loads: Callable[[bytes], Any] = json.loads
) -> IdentityMessage:
    """An identity-topic message, checked; ``DecodeError`` with the reason if it is not one."""
    try:
        raw = loads(value or b"")
    except ValueError as exc:
        raise DecodeError(f"identity message is not JSON ({str(exc)[:80]})") from None
    if not isinstance(raw, dict):
        raise DecodeError("identity message must be a JSON object")
    op = raw.get("op")
    source_id, target_id, ts = raw.get("from"), raw.get("into"), raw.get("ts", 0)
    if op not in ("merge", "state", "events", "forget"):
        raise DecodeError(f"identity message has an unknown op {str(op)[:32]!r}")
    if not isinstance(source_id, str) or not isinstance(target_id, str):
        raise DecodeError("identity message needs string 'from' and 'into' ids")
    if source_id == target_id:
        raise DecodeError(f"identity message merges {source_id[:64]!r} into itself")
    if type(ts) is not int:
        raise DecodeError("identity message 'ts' must be an integer (epoch ms)")
    addressed = target_id if op in ("state", "events") else source_id
    if key is None or key.decode("utf-8", "replace") != addressed:
        raise DecodeError(f"identity {op} message must be keyed by {addressed[:64]!r}")
    if op == "merge" or op == "forget":
        return IdentityMessage(op, source_id, target_id, ts)
    if op == "state":
        state = raw.get("state")
        if state is not None and not isinstance(state, dict):
            raise DecodeError("identity state message 'state' must be an object or null")
        return IdentityMessage(op, source_id, target_id, ts, state)
    source, inner_key, inner = raw.get("source"), raw.get("key"), raw.get("value")
    if not isinstance(source, str) or not isinstance(inner, str):
        raise DecodeError("identity events message needs string 'source' and 'value'")
    try:
        decoded = base64.b64decode(inner, validate=True)
    except ValueError:
        raise DecodeError("identity events message 'value' is not base64") from None
    inner_key_bytes = inner_key.encode() if isinstance(inner_key, str) else None
    return IdentityMessage(op, source_id, target_id, ts, None, source, inner_key_bytes, decoded)


def stitch_targets(profile: CustomerProfile, others: Iterable[str | None]) -> list[str]:
    """The ids named by a customer's events that should be merged into them and were not
    asked yet; they are remembered as asked."""
    out = []
    for other in others:
        if (
            other
            and other != profile.customer_id
            and other not in profile.merged_ids
            and other not in profile.merge_asked
        ):
            profile.merge_asked.append(other)
            out.append(other)
    if len(profile.merge_asked) > MAX_ASKED:
        del profile.merge_asked[: len(profile.merge_asked) - MAX_ASKED]
    return out


def redirect_of(profile: CustomerProfile, target_id: str) -> CustomerProfile:
    """What remains of a merged id: where it points, and its message positions (so a message
    it applied before the merge and redelivered after is not forwarded)."""
    return CustomerProfile(
        profile.customer_id,
        positions=dict(profile.positions),
        merged_into=target_id,
    )


def absorb(
    into: CustomerProfile, other: CustomerProfile, session_timeout_ms: int = SESSION_TIMEOUT_MS
) -> None:
    """Fold ``other``'s profile into ``into``'s.

    Exact for the canonical value features: orders and revenue add up, less any purchase in
    both recent windows (sent under both ids: counted once); first and last seen and last
    purchase are the earliest and latest. The rest: counts added, decayed sums combined in
    event time, means weighted, traits and country newest-wins, the event-id windows united.
    The current session: one visit if both ids' sessions are the same one (``Session.merged``:
    a visitor who logs in mid-visit keeps their cart), else the one with the newer event.
    What ``into`` last published (segments, persona, lifecycle) and its message positions are
    its own and stay; the merged profile is evaluated as of no earlier time than either was.

    >>> from models.events import Event
    >>> a, b = CustomerProfile("anon"), CustomerProfile("c-1")
    >>> _ = a.apply(Event("p1", "anon", "purchase", 1_000, amount=10.0))
    >>> _ = b.apply(Event("p1", "c-1", "purchase", 1_000, amount=10.0))   # sent under both
    >>> _ = b.apply(Event("p2", "c-1", "purchase", 5_000, amount=5.0))
    >>> absorb(b, a)
    >>> b.orders_total, b.revenue_total, b.first_seen_ts, b.merged_ids
    (2, 15.0, 1000, ['anon'])
    """
    mine = into.recent_ids.get("purchase", [])
    theirs = other.recent_ids.get("purchase", [])
    my_amounts = _amounts_by_id(mine, into.purchase_amounts)
    their_amounts = _amounts_by_id(theirs, other.purchase_amounts)
    duplicate_orders, duplicate_revenue = 0, 0.0
    mine_set = set(mine)
    for event_id in theirs:
        if event_id in mine_set:
            duplicate_orders += 1
            duplicate_revenue += their_amounts.get(event_id, my_amounts.get(event_id, 0.0))
    duplicates = duplicate_orders + sum(
        len(set(ids) & set(into.recent_ids.get(group, ())))
        for group, ids in other.recent_ids.items()
        if group != "purchase"
    )

    into.orders_total += other.orders_total - duplicate_orders
    into.revenue_total += other.revenue_total - duplicate_revenue
    into.first_seen_ts = _earliest(into.first_seen_ts, other.first_seen_ts)
    _merge_visits(into, other)  # before the two below: they read the sides' own numbers
    _merge_recent(into, other)  # and before the times: it reads which side was seen last
    into.last_seen_ts = _latest(into.last_seen_ts, other.last_seen_ts)
    into.last_purchase_ts = _latest(into.last_purchase_ts, other.last_purchase_ts)
    into.last_checkout_ts = _latest(into.last_checkout_ts, other.last_checkout_ts)
    into.abandoned_checkout_ts = _latest(into.abandoned_checkout_ts, other.abandoned_checkout_ts)
    into.applied += max(0, other.applied - duplicates)
    into.evaluated_through = max(into.evaluated_through, other.evaluated_through)

    for kind, n in other.counts.items():
        into.counts[kind] = into.counts.get(kind, 0) + n
    for mine_counter, their_counter in (
        (into.categories, other.categories),
        (into.category_spend, other.category_spend),
        (into.devices, other.devices),
        (into.hours, other.hours),
    ):
        _add_counts(mine_counter, their_counter)
    if other.country and other.country_ts >= into.country_ts:
        into.country, into.country_ts = other.country, other.country_ts
    into.channel = into.channel or other.channel
    for name, value in other.traits.items():
        ts = other.traits_ts.get(name, 0)
        if name not in into.traits or ts > into.traits_ts.get(name, 0):
            into.traits[name] = value
            into.traits_ts[name] = ts
    if other.order_value.n:  # River's Mean divides by the combined count
        into.order_value = into.order_value + other.order_value
    if other.viewed_price.n:
        into.viewed_price = into.viewed_price + other.viewed_price
    if other.session is not None:  # one visit under both ids (a login mid-visit): one session
        mine_session = into.session
        into.session = (
            other.session
            if mine_session is None
            else mine_session.merged(other.session, session_timeout_ms)
        )
    # Purchases waiting for their visit under either id (one sent under both waits once),
    # then those the merged visit has
    pending = into.pending_purchases
    for entry in other.pending_purchases:
        if entry not in pending:
            pending.append(list(entry))
    trim_pending(pending)
    adopt(into.session, pending, session_timeout_ms)
    into.frequency_decayed.add(other.frequency_decayed.value, other.frequency_decayed.ref_ts)
    into.monetary_decayed.add(other.monetary_decayed.value, other.monetary_decayed.ref_ts)
    _unite_windows(into, other, mine, theirs)

    merged = [other.customer_id, *other.merged_ids]
    into.merged_ids = [i for i in into.merged_ids if i not in merged] + merged
    if len(into.merged_ids) > MAX_MERGED_IDS:
        del into.merged_ids[: len(into.merged_ids) - MAX_MERGED_IDS]
    into.merge_asked = [i for i in into.merge_asked if i not in merged]


def _amounts_by_id(ids: list[str], amounts: list[float]) -> dict[str, float]:
    """The known amounts of a purchase window (aligned with its newest ids)."""
    return dict(zip(ids[len(ids) - len(amounts) :], amounts, strict=True))


def _unite_windows(
    into: CustomerProfile, other: CustomerProfile, mine: list[str], theirs: list[str]
) -> None:
    amounts_known = len(into.purchase_amounts) == len(mine) and len(other.purchase_amounts) == len(
        theirs
    )
    if amounts_known:
        their_amounts = _amounts_by_id(theirs, other.purchase_amounts)
    for group, ids in other.recent_ids.items():
        current = into.recent_ids.get(group, [])
        known = set(current)
        added = [i for i in ids if i not in known]
        united = (added + current)[-_UNITED_WINDOW:]
        into.recent_ids[group] = united
        if group == "purchase":
            if amounts_known:
                amounts = [their_amounts[i] for i in added] + into.purchase_amounts
                into.purchase_amounts = amounts[-len(united) :]
            else:  # only this customer's own newest amounts stay aligned
                into.purchase_amounts = into.purchase_amounts[-len(united) :]


def _newer_older(
    into: CustomerProfile, other: CustomerProfile
) -> tuple[CustomerProfile, CustomerProfile]:
    """The side seen last, then the other (``into`` on a tie)."""
    if (other.last_seen_ts or 0) > (into.last_seen_ts or 0):
        return other, into
    return into, other


def _merge_visits(into: CustomerProfile, other: CustomerProfile) -> None:
    """Both ids' sessions, cart sessions and session id windows: a visit seen under both ids
    (a login mid-visit) counts once; the visits are numbered as :func:`_merge_recent` orders
    them (the side seen last's after the other's), and the window keeps the newest ids."""
    newer, older = _newer_older(into, other)
    shared = into.visits.keys() & other.visits.keys()
    into.sessions += other.sessions - len(shared)
    both_carts = sum(1 for sid in shared if into.visits[sid][1] and other.visits[sid][1])
    into.cart_sessions += other.cart_sessions - both_carts
    offset = older.recent_visits
    merged = {sid: list(visit) for sid, visit in older.visits.items()}
    for sid, (number, cart) in newer.visits.items():
        renumbered = number + offset
        was = merged.pop(sid, None)  # the shared visit goes in as the newer side's
        merged[sid] = (
            [renumbered, cart] if was is None else [max(renumbered, was[0]), cart | was[1]]
        )
    while len(merged) > VISIT_WINDOW:
        del merged[next(iter(merged))]
    into.visits = merged


def _merge_recent(into: CustomerProfile, other: CustomerProfile) -> None:
    """Both customers' recent category weights (``recent_categories``) on the merged
    customer's visits (``recent_visits``, the two sides' added): the side seen last keeps its
    visits newest, the other's come before them, as if that id's visits had all come first (the
    older id's newest visit weighs as the merged customer's newest less the newer id's visits).
    The sum is kept on the shift that puts the merged newest visit's weight between 1 and 2."""
    newer, older = _newer_older(into, other)
    visits = into.recent_visits + other.recent_visits
    after = visits / RECENT_HALF_VISITS
    shift = int(after)
    merged: dict[str, float] = {}
    for side, before in ((older, newer.recent_visits), (newer, 0)):
        # a view of ``side``'s newest visit weighs 2 ** (side.visits / R - side.shift); there
        # it is to weigh 2 ** ((visits - before) / R - shift)
        exponent = (visits - before - side.recent_visits) / RECENT_HALF_VISITS
        factor = 2.0 ** (exponent + side.recent_shift - shift)
        for key, n in side.recent_categories.items():
            if n * factor > RECENT_FLOOR:
                bump(merged, key, n * factor)
    into.recent_categories.clear()
    into.recent_categories.update(merged)
    into.recent_shift = shift
    into.recent_visits = visits


def _add_counts(mine: dict[str, float], theirs: dict[str, float]) -> None:
    for key, n in theirs.items():
        bump(mine, key, n)


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
