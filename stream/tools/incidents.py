"""Incidents for the generator's traffic, each with a known start and end in event time.

The generator (``stream.tools.generator``) draws sessions of known personas; this module
changes its stream from the outside, through its public API (``session``, ``customer_ids``,
``clock``, ``Message``) and the input contract of the events, without touching how sessions are
drawn:

- ``payment_outage``: a share of the checkouts on one device fail: the purchase message is
  dropped, the session keeps its cart and checkout events;
- ``visitor_spike``: extra sessions of new, anonymous visitors who browse and do not buy (a
  session of another generator, its cart and purchase removed, under a fresh customer id);
- ``checkout_loop``: a broken checkout loops the users of one device back to the cart: every
  checkout on it is followed by a few cart views and checkout attempts, and no purchase.

Incidents draw from their own random generator, so the stream outside an incident is the same
with and without them. ``failing_checkouts`` fails that share of every checkout, on every
device and every day, with incidents or without (a shop whose abandoned checkouts have a
baseline: some buyers always give up at the payment); it draws from a generator of its own
too. ``SteadyPopulation`` picks the customers of the sessions so that the
stream is stationary over months: customers arrive at a steady rate and leave after a random
lifetime (a fixed population would make every segment of the customer lifecycle move in
waves: everyone new at once, everyone past "new" thirty days later).

>>> from stream.tools.generator import TrafficGenerator
>>> DAY = 86_400_000
>>> g = TrafficGenerator(customers=300, seed=3, session_gap_ms=DAY // 200)
>>> outage = Incident("payment_outage", g.clock + 2 * DAY, g.clock + 4 * DAY, share=1.0,
...                   device="mobile")
>>> traffic = IncidentTraffic(g, [outage], seed=1)
>>> bought = {}
>>> for _ in range(1200):
...     for m in traffic.session():
...         if m.source == "purchases" and m.value["device"] == "mobile":
...             day = (m.value["ts"] - outage.start_ms) // DAY
...             bought[day] = bought.get(day, 0) + 1
>>> bought.get(0, 0), bought.get(1, 0), bought[2] > 0
(0, 0, True)
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from stream.tools.generator import Message, TrafficGenerator

__all__ = [
    "INCIDENT_KINDS",
    "InEventTimeOrder",
    "Incident",
    "IncidentTraffic",
    "SteadyPopulation",
    "check_failing_checkouts",
]

DAY_MS = 86_400_000
INCIDENT_KINDS = ("payment_outage", "visitor_spike", "checkout_loop")
_CART_EVENTS = frozenset({"add_to_cart", "remove_from_cart", "checkout_start"})


@dataclass(frozen=True)
class Incident:
    """One incident in ``[start_ms, end_ms)`` of event time.

    ``share``: the share of checkouts on ``device`` that fail (``payment_outage``), or the
    extra sessions of new visitors per regular session (``visitor_spike``);
    ``checkout_loop`` loops every checkout on ``device``.
    """

    kind: str
    start_ms: int
    end_ms: int
    share: float = 0.5
    device: str = "mobile"

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(f"unknown incident {self.kind!r}; known: {', '.join(INCIDENT_KINDS)}")
        if self.end_ms <= self.start_ms:
            raise ValueError("an incident must end after it starts")
        if self.share <= 0 or (self.kind == "payment_outage" and self.share > 1):
            raise ValueError("share must be positive (at most 1 for a payment outage)")

    def covers(self, ts: int) -> bool:
        return self.start_ms <= ts < self.end_ms


class SteadyPopulation:
    """Picks the customer of each session from a population that renews itself at a steady
    rate: ``arrivals_per_day`` new customers a day (in the order of the generator's
    ``customer_ids``), each staying an exponential lifetime of mean ``lifetime_days``. It starts
    in its steady state (``arrivals_per_day * lifetime_days`` customers), so only what
    depends on the stream's start (everyone is first seen in its first days) is not stationary.
    """

    def __init__(
        self,
        generator: TrafficGenerator,
        arrivals_per_day: float,
        lifetime_days: float,
        seed: int = 0,
    ) -> None:
        if arrivals_per_day <= 0 or lifetime_days <= 0:
            raise ValueError("arrivals_per_day and lifetime_days must be positive")
        self.generator = generator
        self.rng = random.Random(seed)
        self.lifetime_ms = lifetime_days * DAY_MS
        self.arrival_gap_ms = DAY_MS / arrivals_per_day
        self._pool = iter(generator.customer_ids)
        self._active: list[str] = []
        self._where: dict[str, int] = {}
        self._leaving: list[tuple[float, str]] = []
        self._next_arrival = float(generator.clock)
        for _ in range(round(arrivals_per_day * lifetime_days)):
            self._arrive(generator.clock)

    def _arrive(self, now: float) -> None:
        customer_id = next(self._pool, None)
        if customer_id is None:
            raise ValueError("the generator has too few customers for this many days: raise it")
        self._where[customer_id] = len(self._active)
        self._active.append(customer_id)
        heapq.heappush(
            self._leaving, (now + self.rng.expovariate(1.0) * self.lifetime_ms, customer_id)
        )

    def _leave(self, customer_id: str) -> None:
        at = self._where.pop(customer_id)
        last = self._active.pop()
        if last != customer_id:
            self._active[at] = last
            self._where[last] = at

    def pick(self) -> str:
        now = self.generator.clock
        while self._next_arrival <= now:
            self._arrive(self._next_arrival)
            self._next_arrival += self.arrival_gap_ms
        while self._leaving and self._leaving[0][0] <= now and len(self._active) > 1:
            self._leave(heapq.heappop(self._leaving)[1])
        return self.rng.choice(self._active)


class IncidentTraffic:
    """The generator's sessions with ``incidents`` applied by the event time of each session.

    ``pick`` chooses each session's customer (default: the generator's own ``pick``);
    ``failing_checkouts``: the share of every purchase dropped at all times (its session keeps
    its cart and checkout), before any incident.
    """

    def __init__(
        self,
        generator: TrafficGenerator,
        incidents: Sequence[Incident] = (),
        seed: int = 0,
        pick: Any = None,
        failing_checkouts: float = 0.0,
    ) -> None:
        check_failing_checkouts(failing_checkouts)
        self.generator = generator
        self.incidents = tuple(incidents)
        self.failing_checkouts = failing_checkouts
        self._failing_rng = random.Random(f"failing-checkouts-{seed}")
        self.failed_checkouts = 0
        self.rng = random.Random(seed)
        self.pick = pick if pick is not None else generator.pick
        self.affected: dict[str, int] = dict.fromkeys(INCIDENT_KINDS, 0)
        self._visitors: TrafficGenerator | None = None
        self._visitor_count = 0

    def sessions(self) -> Iterator[list[Message]]:
        while True:
            yield self.session()

    def session(self) -> list[Message]:
        """The messages of the next session, and of any visitor session an incident adds."""
        messages = self.generator.session(self.pick())
        ts = _first_ts(messages)
        if self.failing_checkouts:
            messages = self._fail_some(messages)
        extra: list[Message] = []
        for incident in self.incidents:
            if not incident.covers(ts):
                continue
            if incident.kind == "payment_outage":
                messages = self._fail_payments(messages, incident)
            elif incident.kind == "checkout_loop":
                messages = self._loop_checkouts(messages, incident)
            else:
                whole, part = divmod(incident.share, 1.0)
                for _ in range(int(whole) + (self.rng.random() < part)):
                    extra += self._visitor(ts)
        return messages + extra

    def _fail_some(self, messages: list[Message]) -> list[Message]:
        kept, failed = _drop_purchases(messages, self._failing_rng, self.failing_checkouts)
        self.failed_checkouts += failed
        return kept

    def _fail_payments(self, messages: list[Message], incident: Incident) -> list[Message]:
        kept, failed = _drop_purchases(messages, self.rng, incident.share, incident.device)
        self.affected["payment_outage"] += failed
        return kept

    def _loop_checkouts(self, messages: list[Message], incident: Incident) -> list[Message]:
        clicks = [e for m in messages if m.source == "clickstream" for e in _events(m)]
        if not any(
            e.get("type") == "checkout_start" and e.get("device") == incident.device for e in clicks
        ):
            return messages
        self.affected["checkout_loop"] += 1
        out = [m for m in messages if m.source != "purchases"]
        last = max(clicks, key=lambda e: e["ts"])
        loop: list[dict[str, Any]] = []
        ts = last["ts"]
        for _ in range(self.rng.randint(2, 4)):
            for kind, page in (("page_view", "/cart"), ("checkout_start", "/checkout")):
                ts += self.rng.randrange(5_000, 40_000)
                event = {k: v for k, v in last.items() if k not in ("page", "category", "price")}
                event.update(
                    type=kind,
                    ts=ts,
                    page=page,
                    event_id=f"{last['event_id']}-loop{len(loop)}",
                )
                event.pop("product_id", None)
                loop.append(event)
        key = last["customer_id"]
        if self.generator.arrays:
            out.append(Message("clickstream", key, loop))
        else:
            out += [Message("clickstream", key, e) for e in loop]
        return out

    def _visitor(self, ts: int) -> list[Message]:
        """One session of a new visitor who browses and does not buy, dated near ``ts``."""
        if self._visitors is None:
            self._visitors = TrafficGenerator(
                customers=200,
                seed=self.rng.getrandbits(32),
                start_ms=self.generator.clock,
                session_gap_ms=self.generator.session_gap_ms,
                arrays=self.generator.arrays,
                prefix="visitor-pool",
            )
        session = self._visitors.session(self._visitors.pick())
        self._visitor_count += 1
        self.affected["visitor_spike"] += 1
        visitor = f"visitor-{self.rng.getrandbits(32):08x}-{self._visitor_count}"
        shift = ts + self.rng.randrange(-1_800_000, 1_800_000) - _first_ts(session)
        out = []
        for m in session:
            if m.source != "clickstream":
                continue  # no purchase, and no identify: an anonymous visitor
            events = [
                {**e, "customer_id": visitor, "ts": e["ts"] + shift}
                for e in _events(m)
                if e.get("type") not in _CART_EVENTS
            ]
            if not events:
                continue
            value: Any = events if isinstance(m.value, list) else events[0]
            if isinstance(m.value, list) or len(events) == 1:
                out.append(Message("clickstream", visitor, value))
        return out


def check_failing_checkouts(share: float) -> None:
    """Refuse a share of failing checkouts outside [0, 1) (all of them failing leaves no
    purchase to fail an incident's share of)."""
    if not 0.0 <= share < 1.0:
        raise ValueError("failing_checkouts must be in [0, 1)")


def _drop_purchases(
    messages: list[Message], rng: random.Random, share: float, device: str | None = None
) -> tuple[list[Message], int]:
    """``messages`` without ``share`` of their purchases (of ``device``'s only, if given; one
    draw of ``rng`` per such purchase), and how many were dropped."""
    out = []
    dropped = 0
    for m in messages:
        value = m.value
        if (
            m.source == "purchases"
            and isinstance(value, dict)
            and (device is None or value.get("device") == device)
            and rng.random() < share
        ):
            dropped += 1
            continue
        out.append(m)
    return out, dropped


def _events(message: Message) -> list[dict[str, Any]]:
    value = message.value
    return value if isinstance(value, list) else [value]


class InEventTimeOrder:
    """``traffic``'s sessions in the event-time order of their first events, as a live shop's
    visits arrive. The generator dates each session at its customer's preferred hour in the day
    before its clock, so its sessions come up to a day late and out of order; this holds each
    back until the clock is ``horizon_ms`` past it (every later session is dated after it)."""

    def __init__(self, traffic: IncidentTraffic, horizon_ms: int = DAY_MS) -> None:
        self.traffic = traffic
        self.generator = traffic.generator
        self.incidents = traffic.incidents
        self.horizon_ms = horizon_ms
        self._held: list[tuple[int, int, list[Message]]] = []
        self._order = 0

    def session(self) -> list[Message]:
        """The held session that comes first in event time, once no later one can precede it."""
        held, clock = self._held, self.generator
        while not held or held[0][0] > clock.clock - self.horizon_ms:
            messages = self.traffic.session()
            self._order += 1
            heapq.heappush(held, (_first_ts(messages), self._order, messages))
        return heapq.heappop(held)[2]


def _first_ts(messages: Sequence[Message]) -> int:
    return min((e["ts"] for m in messages for e in _events(m)), default=0)
