"""The customer's current visit in event time: what a visitor does now, for on-site rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from models.events import Event
from models.frozen import Frozen

__all__ = [
    "NO_SESSION",
    "SESSION_FACTS",
    "Session",
    "SessionPolicy",
    "adopt",
    "belongs",
    "follow",
    "session_facts",
    "session_record",
]

_MINUTE_MS = 60_000
_MAX_CATEGORIES = 8  # category counters kept per session; the smallest is dropped past this

#: The ``session.*`` facts when there is no current session (none yet, or it ended).
NO_SESSION: dict[str, Any] = {
    "session.active": False,
    "session.page_views": 0,
    "session.product_views": 0,
    "session.searches": 0,
    "session.cart_adds": 0,
    "session.cart_items": 0,
    "session.cart_value": 0.0,
    "session.purchases": 0,
    "session.checkouts": 0,
    "session.top_category": None,
    "session.top_category_views": 0,
    "session.minutes": 0.0,
    "session.entry_channel": None,
}
#: Every fact a rule can name about the current session.
SESSION_FACTS = tuple(NO_SESSION)
# The record's ``session`` object: the facts but ``active`` (the object is null without one).
_RECORD_KEYS = tuple((name, name[len("session.") :]) for name in SESSION_FACTS[1:])


@dataclass(slots=True)
class Session:
    """One visit: its id (if the events carry one), first and last event time, and counts.

    The cart is what was added (less what was removed) after the session's newest purchase:
    ``last_add`` and ``last_purchase`` keep that right when a purchase is applied before the
    clicks around it (the topics are consumed independently).
    """

    id: str | None
    start: int
    last: int
    channel: str | None = None
    page_views: int = 0
    product_views: int = 0
    searches: int = 0
    cart_adds: int = 0
    cart_items: int = 0
    cart_value: float = 0.0
    purchases: int = 0
    last_add: int = 0
    last_purchase: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    checkouts: int = 0  # checkout_start clicks

    def count(self, event: Event) -> None:
        """Fold one click of this visit into its counts (a purchase: :meth:`purchase`)."""
        kind, ts = event.kind, event.ts
        if kind == "purchase":
            self.purchase(ts)
            return
        if ts < self.start:
            self.start = ts
        elif ts > self.last:
            self.last = ts
        if self.id is None and event.session_id:
            self.id = event.session_id
        if self.channel is None and event.channel:
            self.channel = event.channel
        if kind == "product_view" or kind == "page_view":
            if kind == "page_view":
                self.page_views += 1
            else:
                self.product_views += 1
            category = event.category
            if category:
                cats = self.categories
                cats[category] = cats.get(category, 0) + 1
                if len(cats) > _MAX_CATEGORIES:
                    del cats[min(cats, key=lambda k: (cats[k], k))]
        elif kind == "search":
            self.searches += 1
        elif kind == "checkout_start":
            self.checkouts += 1
        elif kind == "add_to_cart":
            self.cart_adds += 1
            if ts > self.last_purchase:
                self.cart_items += 1
                self.cart_value += event.price or 0.0
            self.last_add = max(self.last_add, ts)
        elif kind == "remove_from_cart" and ts > self.last_purchase and self.cart_items:
            self.cart_items -= 1
            self.cart_value = max(0.0, self.cart_value - (event.price or 0.0))

    def purchase(self, ts: int) -> None:
        """Count a purchase of this visit at ``ts``: what was added before it is bought. The
        visit's times are its clicks' (purchases come on their own topic: a purchase moving
        them would make whether a later click joins depend on which topic was read first)."""
        self.purchases += 1
        if ts >= self.last_add:
            self.cart_items, self.cart_value = 0, 0.0
        self.last_purchase = max(self.last_purchase, ts)

    def to_state(self) -> list[Any]:
        return [
            self.id,
            self.start,
            self.last,
            self.channel,
            self.page_views,
            self.product_views,
            self.searches,
            self.cart_adds,
            self.cart_items,
            self.cart_value,
            self.purchases,
            self.last_add,
            self.last_purchase,
            self.categories,
            self.checkouts,
        ]

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> Session:
        """A session ``to_state`` gave; one stored before ``checkouts`` (14 values) has 0."""
        (id_, start, last, channel, page_views, product_views, searches, cart_adds, cart_items,
         cart_value, purchases, last_add, last_purchase, categories) = state[:14]  # fmt: skip
        return cls(
            id_,
            start,
            last,
            channel,
            page_views,
            product_views,
            searches,
            cart_adds,
            cart_items,
            cart_value,
            purchases,
            last_add,
            last_purchase,
            dict(categories),
            state[14] if len(state) > 14 else 0,
        )

    def merged(self, other: Session, timeout_ms: int) -> Session:
        """The current session of two profiles merged (``models.identity.absorb``): one visit
        if they are the same (the same id, or no id on one side and their events within the
        timeout of each other), its counts added; else the one with the newer event.

        >>> a = Session("s1", 0, 60_000, page_views=2)
        >>> b = Session("s1", 120_000, 180_000, "email", product_views=1)
        >>> m = a.merged(b, 1_800_000)
        >>> (m.start, m.last, m.channel, m.page_views, m.product_views)
        (0, 180000, 'email', 2, 1)
        >>> a.merged(Session("s2", 500_000, 500_000), 1_800_000).id
        's2'
        """
        if self.id and other.id and self.id != other.id:
            same = False
        else:
            same = other.start < self.last + timeout_ms and self.start < other.last + timeout_ms
        if not same:
            return other if other.last > self.last else self
        first, second = (self, other) if self.start <= other.start else (other, self)
        categories = dict(self.categories)
        for name, n in other.categories.items():
            categories[name] = categories.get(name, 0) + n
        while len(categories) > _MAX_CATEGORIES:
            del categories[min(categories, key=lambda k: (categories[k], k))]
        open_cart = self.last_purchase < self.last_add or other.last_purchase < other.last_add
        last_purchase = max(self.last_purchase, other.last_purchase)
        cart_items = self.cart_items + other.cart_items if open_cart else 0
        return Session(
            self.id or other.id,
            first.start,
            max(self.last, other.last),
            first.channel or second.channel,
            self.page_views + other.page_views,
            self.product_views + other.product_views,
            self.searches + other.searches,
            self.cart_adds + other.cart_adds,
            cart_items,
            self.cart_value + other.cart_value if cart_items else 0.0,
            self.purchases + other.purchases,
            max(self.last_add, other.last_add),
            last_purchase,
            categories,
            self.checkouts + other.checkouts,
        )


def follow(current: Session | None, event: Event, timeout_ms: int) -> Session | None:
    """The customer's current session after one of their clicks.

    A session ends after ``timeout_ms`` of event time without events, or at a click with
    another ``session_id`` than its own; that click then starts the next one. A click older
    than the current session (another id, or ``timeout_ms`` before its start) belongs to an
    earlier visit and leaves it as it is. Purchases do not open or end sessions (they come on
    their own topic, read independently: which visit is current would depend on which topic
    was read first); a purchase joins the current session if it belongs to it
    (:func:`belongs`), on arrival or when a later click makes it so (:func:`adopt`).

    >>> s = follow(None, Event("1", "c", "page_view", 0, session_id="s1", channel="email"), 60_000)
    >>> s = follow(s, Event("2", "c", "add_to_cart", 30_000, price=9.5), 60_000)
    >>> s.id, s.page_views, s.cart_items, s.cart_value, s.channel
    ('s1', 1, 1, 9.5, 'email')
    >>> follow(s, Event("3", "c", "search", 100_000), 60_000).searches   # a new visit
    1
    >>> follow(s, Event("4", "c", "purchase", 40_000, amount=9.5), 60_000).cart_items
    0
    """
    ts, session_id = event.ts, event.session_id
    if event.kind == "purchase":  # joins, or not: CustomerProfile keeps it for a later visit
        if current is not None and belongs(current, ts, session_id, timeout_ms):
            current.purchase(ts)
        return current
    if current is not None:
        if session_id and current.id and session_id != current.id:
            if ts < current.start:
                return current  # a late event of an earlier visit
        elif ts < current.last + timeout_ms:
            if ts + timeout_ms > current.start or (bool(session_id) and session_id == current.id):
                current.count(event)
            return current
    opened = Session(session_id, ts, ts)
    opened.count(event)
    return opened


def belongs(session: Session, ts: int, session_id: str | None, timeout_ms: int) -> bool:
    """Whether a purchase at ``ts`` (with ``session_id``, if it carries one) is this visit's.

    Not before the visit's first click (purchases come last in a visit; an older one is an
    earlier visit's, and a visit reopened under the same id after a timeout does not share the
    purchases of the visit before it) and within ``timeout_ms`` of its last; with session ids
    on both, the same id. A visit only grows as its clicks come, so once a purchase belongs it
    always does: whether it joins does not depend on when it is read.

    >>> s = Session("s1", 60_000, 120_000)
    >>> belongs(s, 130_000, "s1", 60_000), belongs(s, 130_000, "s2", 60_000)
    (True, False)
    >>> belongs(s, 30_000, None, 60_000), belongs(s, 150_000, None, 60_000)
    (False, True)
    """
    if session_id and session.id and session_id != session.id:
        return False
    return session.start <= ts < session.last + timeout_ms


def adopt(session: Session | None, pending: list[list[Any]], timeout_ms: int) -> None:
    """Count into ``session`` the pending purchases (``[ts, session id]``: read when they
    belonged to no current visit) that belong to it now, and take them off ``pending`` (the
    profile keeps the newest few by event time: a visit's start can move back under a late
    click, so none is too old to wait)."""
    if session is None or not pending:
        return
    kept = []
    for entry in pending:
        ts, session_id = entry
        if belongs(session, ts, session_id, timeout_ms):
            session.purchase(ts)
        else:
            kept.append(entry)
    pending[:] = kept


@dataclass(frozen=True)
class SessionPolicy(Frozen):
    """When a session is over: ``timeout_minutes`` of event time after its last event.

    >>> policy = SessionPolicy(30)
    >>> s = Session("s1", 0, 600_000)
    >>> policy.ends_at(s) / 60_000, policy.active(s, 2_399_999), policy.active(s, 2_400_000)
    (40.0, True, False)
    """

    timeout_minutes: float = 30.0
    timeout_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.timeout_minutes > 0:
            raise ValueError("the session timeout must be more than 0 minutes")
        object.__setattr__(self, "timeout_ms", round(self.timeout_minutes * _MINUTE_MS))

    def ends_at(self, session: Session | None) -> int | None:
        """The event time at which the session is over (if no event of it comes first)."""
        return None if session is None else session.last + self.timeout_ms

    def active(self, session: Session | None, at: int) -> bool:
        return session is not None and at < session.last + self.timeout_ms


def session_facts(session: Session | None, at: int, policy: SessionPolicy) -> dict[str, Any]:
    """The ``session.*`` facts at event time ``at``: :data:`NO_SESSION` once it is over.

    >>> s = Session("s1", 0, 90_000, "ads", page_views=3, categories={"shoes": 3, "bags": 1})
    >>> f = session_facts(s, 100_000, SessionPolicy())
    >>> f["session.top_category"], f["session.top_category_views"], f["session.minutes"]
    ('shoes', 3, 1.5)
    >>> session_facts(s, 90_000 + 1_800_000, SessionPolicy())["session.active"]
    False
    """
    if session is None or at >= session.last + policy.timeout_ms:
        return NO_SESSION
    cats = session.categories
    top = min(cats, key=lambda k: (-cats[k], k)) if cats else None
    return {
        "session.active": True,
        "session.page_views": session.page_views,
        "session.product_views": session.product_views,
        "session.searches": session.searches,
        "session.cart_adds": session.cart_adds,
        "session.cart_items": session.cart_items,
        "session.cart_value": round(session.cart_value, 2),
        "session.purchases": session.purchases,
        "session.checkouts": session.checkouts,
        "session.top_category": top,
        "session.top_category_views": cats[top] if top is not None else 0,
        "session.minutes": round((session.last - session.start) / _MINUTE_MS, 1),
        "session.entry_channel": session.channel,
    }


def session_record(facts: dict[str, Any], session: Session | None) -> dict[str, Any] | None:
    """The record's ``session`` object: the current session's facts, its id and start; None
    when there is none."""
    if session is None or not facts.get("session.active"):
        return None
    out: dict[str, Any] = {"id": session.id, "started_at": session.start}
    for name, key in _RECORD_KEYS:
        out[key] = facts[name]
    return out
