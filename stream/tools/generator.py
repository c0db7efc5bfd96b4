"""Realistic demo traffic from a handful of known personas; the truth goes to a side file only."""

from __future__ import annotations

import csv
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "GENERATOR_PERSONAS",
    "Message",
    "PersonaBehavior",
    "TrafficGenerator",
    "parse_mix",
]

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class PersonaBehavior:
    """How one kind of customer behaves: the generator's ground truth."""

    name: str
    weight: float
    devices: dict[str, float]
    hours: tuple[int, ...]  # preferred hours of day (UTC)
    categories: dict[str, float]
    views: tuple[int, int]  # product views per session
    page_views: tuple[int, int]
    searches: tuple[int, int]
    cart_prob: float  # a session adds to cart
    buy_prob: float  # a session with a cart ends in a purchase
    order_value: tuple[float, float]  # mean and spread of a purchase
    price: tuple[float, float]  # viewed product prices
    countries: dict[str, float]
    channel: str
    traits: dict[str, Any] = field(default_factory=dict)


GENERATOR_PERSONAS: tuple[PersonaBehavior, ...] = (
    PersonaBehavior(
        "Executive Ella",
        0.2,
        {"desktop": 0.55, "mobile": 0.45},
        (19, 20, 21, 22),
        {"designer-dresses": 0.6, "handbags": 0.3, "shoes": 0.1},
        (2, 4),
        (1, 2),
        (0, 1),
        0.8,
        0.85,
        (320.0, 60.0),
        (250.0, 80.0),
        {"DE": 0.5, "GB": 0.3, "FR": 0.2},
        "email",
        {"age": 45, "gender": "f", "income_band": "high", "interests": ["fashion", "travel"]},
    ),
    PersonaBehavior(
        "Bargain Ben",
        0.25,
        {"mobile": 0.9, "tablet": 0.1},
        (7, 8, 12, 13),
        {"electronics": 0.5, "gadgets": 0.4, "outlet": 0.1},
        (6, 12),
        (2, 4),
        (3, 6),
        0.6,
        0.35,
        (28.0, 8.0),
        (30.0, 12.0),
        {"US": 0.6, "CA": 0.4},
        "coupon",
        {"age": 24, "gender": "m", "income_band": "low", "interests": ["gaming", "deals"]},
    ),
    PersonaBehavior(
        "Browsing Bella",
        0.25,
        {"tablet": 0.7, "mobile": 0.3},
        (14, 15, 16),
        {"home-decor": 0.6, "garden": 0.4},
        (10, 20),
        (4, 8),
        (0, 2),
        0.5,
        0.05,
        (60.0, 15.0),
        (80.0, 30.0),
        {"FR": 0.5, "ES": 0.5},
        "social",
        {"age": 33, "gender": "f", "income_band": "medium", "interests": ["interiors"]},
    ),
    PersonaBehavior(
        "Loyal Larry",
        0.2,
        {"desktop": 0.8, "mobile": 0.2},
        (9, 10, 11),
        {"groceries": 0.7, "household": 0.3},
        (1, 2),
        (0, 1),
        (0, 1),
        0.95,
        0.95,
        (65.0, 10.0),
        (8.0, 3.0),
        {"GB": 0.7, "IE": 0.3},
        "direct",
        {"age": 58, "gender": "m", "income_band": "medium", "interests": ["cooking"]},
    ),
    PersonaBehavior(
        "Techie Tom",
        0.1,
        {"desktop": 1.0},
        (1, 2, 3, 23),
        {"software": 0.6, "servers": 0.4},
        (3, 6),
        (1, 3),
        (2, 4),
        0.7,
        0.7,
        (900.0, 150.0),
        (700.0, 200.0),
        {"US": 0.5, "DE": 0.5},
        "partner",
        {"age": 38, "industry": "software", "company_size": 500, "interests": ["devops"]},
    ),
)


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka message to send: the input source, the key and a JSON-ready value."""

    source: str
    key: str
    value: dict[str, Any] | list[dict[str, Any]]

    @property
    def events(self) -> int:
        return len(self.value) if isinstance(self.value, list) else 1


class TrafficGenerator:
    """Sessions of a fixed population of customers, each of one persona.

    ``start_ms`` is the event time of the first session; each session moves the event clock
    on by ``session_gap_ms``. Deterministic for a given seed. ``arrays=True`` sends a
    session's clickstream events as one JSON array (one customer per message).

    ``not_after`` (live traffic: the wall clock in epoch ms) caps the event clock: a session
    starts no later than an hour before it, so no event is dated after the wall clock (a
    session spans well under an hour), however fast sessions are generated; workers dead-letter
    events dated ahead of their clock (``SEGMENTER_MAX_FUTURE_SKEW_SECONDS``).

    >>> wall = 1_795_000_000_000
    >>> g = TrafficGenerator(customers=5, start_ms=wall, session_gap_ms=HOUR_MS,
    ...                      not_after=lambda: wall)  # 50 sessions: 50 h on, but capped
    >>> ts = [e["ts"] for _ in range(50) for m in g.session(g.pick())
    ...       for e in (m.value if isinstance(m.value, list) else [m.value])]
    >>> max(ts) <= wall
    True
    """

    def __init__(
        self,
        customers: int = 1000,
        seed: int = 7,
        start_ms: int = 1_795_000_000_000,
        session_gap_ms: int = 1_000,
        arrays: bool = True,
        personas: tuple[PersonaBehavior, ...] = GENERATOR_PERSONAS,
        prefix: str = "cust",
        not_after: Callable[[], int] | None = None,
    ) -> None:
        if customers < 1:
            raise ValueError("customers must be at least 1")
        self.rng = random.Random(seed)
        self.arrays = arrays
        self.personas = personas
        self.clock = start_ms
        self.session_gap_ms = session_gap_ms
        self.not_after = not_after
        run = uuid.UUID(int=self.rng.getrandbits(128)).hex[:6]
        weights = [p.weight for p in personas]
        self.truth: dict[str, PersonaBehavior] = {
            f"{prefix}-{run}-{i:06d}": self.rng.choices(personas, weights)[0]
            for i in range(customers)
        }
        self.customer_ids = list(self.truth)
        self._identified: set[str] = set()
        self._counter = 0
        self.mix: dict[str, float] | None = None
        self._by_persona: dict[str, list[str]] = {}
        for customer_id, persona in self.truth.items():
            self._by_persona.setdefault(persona.name, []).append(customer_id)

    def shift(self, mix: dict[str, float]) -> None:
        """From now on, pick each session's persona by these weights (a persona-mix switch).

        Before a shift every customer is equally likely to visit, so sessions follow the
        personas' population weights; afterwards, e.g. ``{"Bargain Ben": 0.6}`` makes 60% of
        sessions Bargain Ben's. Personas not named share what is left equally.

        >>> g = TrafficGenerator(customers=200, seed=1)
        >>> g.shift({"Bargain Ben": 1.0})
        >>> {g.truth[m[0].key].name for m in (g.session(g.pick()) for _ in range(20))}
        {'Bargain Ben'}
        """
        names = {p.name for p in self.personas}
        unknown = set(mix) - names
        if unknown:
            raise ValueError(f"unknown personas {sorted(unknown)}; known: {sorted(names)}")
        if any(w < 0 for w in mix.values()) or sum(mix.values()) > 1.0 + 1e-9:
            raise ValueError("mix weights must be non-negative and sum to at most 1")
        rest = [n for n in names if n not in mix and self._by_persona.get(n)]
        left = max(0.0, 1.0 - sum(mix.values()))
        weights = {**mix, **{n: left / len(rest) for n in rest}} if rest else dict(mix)
        self.mix = {n: w for n, w in weights.items() if w > 0 and self._by_persona.get(n)}

    def pick(self) -> str:
        """The customer of the next session."""
        if self.mix is None:
            return self.rng.choice(self.customer_ids)
        persona = _pick(self.rng, self.mix)
        return self.rng.choice(self._by_persona[persona])

    def sessions(self) -> Iterator[list[Message]]:
        """An endless stream of sessions, each a list of messages."""
        while True:
            yield self.session(self.pick())

    def session(self, customer_id: str) -> list[Message]:
        persona = self.truth[customer_id]
        rng = self.rng
        self.clock += self.session_gap_ms
        if self.not_after is not None:
            self.clock = min(self.clock, self.not_after() - HOUR_MS)
        # Place the session at one of the persona's preferred hours within the last day.
        day = (self.clock // (24 * HOUR_MS)) * 24 * HOUR_MS
        ts = day + rng.choice(persona.hours) * HOUR_MS + rng.randrange(HOUR_MS // 2)
        if ts > self.clock:
            ts -= 24 * HOUR_MS
        session_id = self._id("s")
        device = _pick(rng, persona.devices)
        country = _pick(rng, persona.countries)
        messages: list[Message] = []
        if customer_id not in self._identified:
            self._identified.add(customer_id)
            messages.append(
                Message(
                    "identify",
                    customer_id,
                    {
                        "event_id": self._id("e"),
                        "customer_id": customer_id,
                        "ts": ts,
                        "traits": dict(persona.traits),
                    },
                )
            )
        clicks: list[dict[str, Any]] = []

        def click(kind: str, **extra: Any) -> None:
            nonlocal ts
            ts += rng.randrange(5_000, 60_000)
            clicks.append(
                {
                    "event_id": self._id("e"),
                    "type": kind,
                    "customer_id": customer_id,
                    "ts": ts,
                    "session_id": session_id,
                    "device": device,
                    "country": country,
                    "channel": persona.channel,
                    **extra,
                }
            )

        for _ in range(rng.randint(*persona.page_views)):
            click("page_view", page="/")
        for _ in range(rng.randint(*persona.searches)):
            click("search", page="/search")
        basket: list[tuple[str, str, float]] = []
        for _ in range(rng.randint(*persona.views)):
            category = _pick(rng, persona.categories)
            product = f"p-{category}-{rng.randrange(200)}"
            price = round(max(1.0, rng.gauss(*persona.price)), 2)
            click(
                "product_view",
                page=f"/{category}/{product}",
                category=category,
                product_id=product,
                price=price,
            )
            basket.append((category, product, price))
        if basket and rng.random() < persona.cart_prob:
            category, product, price = rng.choice(basket)
            click("add_to_cart", category=category, product_id=product, price=price)
            if rng.random() < persona.buy_prob:
                click("checkout_start")
                amount = round(max(1.0, rng.gauss(*persona.order_value)), 2)
                ts += rng.randrange(5_000, 30_000)
                purchase = {
                    "event_id": self._id("e"),
                    "type": "purchase",
                    "customer_id": customer_id,
                    "ts": ts,
                    "order_id": self._id("o"),
                    "amount": amount,
                    "currency": "EUR",
                    "items": [
                        {
                            "product_id": product,
                            "category": category,
                            "price": amount,
                            "quantity": 1,
                        }
                    ],
                    "country": country,
                    "session_id": session_id,
                    "device": device,
                }
                messages.extend(self._clicks(customer_id, clicks))
                messages.append(Message("purchases", customer_id, purchase))
                return messages
        messages.extend(self._clicks(customer_id, clicks))
        return messages

    def _clicks(self, customer_id: str, clicks: list[dict[str, Any]]) -> list[Message]:
        if not clicks:
            return []
        if self.arrays:
            return [Message("clickstream", customer_id, clicks)]
        return [Message("clickstream", customer_id, c) for c in clicks]

    def _id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}-{self._counter:x}-{self.rng.getrandbits(32):08x}"

    def write_truth(self, path: Path | str, only: set[str] | None = None) -> int:
        """Write ``customer_id,persona`` for the customers seen (or all) to a CSV side file."""
        rows = [(c, p.name) for c, p in self.truth.items() if only is None or c in only]
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["customer_id", "persona"])
            writer.writerows(rows)
        return len(rows)


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def parse_mix(text: str) -> dict[str, float]:
    """Parse ``"Bargain Ben=0.6,Executive Ella=0.1"`` into persona weights.

    >>> parse_mix("Bargain Ben=0.6, Executive Ella=0.1")
    {'Bargain Ben': 0.6, 'Executive Ella': 0.1}
    """
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, weight = part.partition("=")
        if not sep:
            raise ValueError(f"expected PERSONA=WEIGHT, got {part.strip()!r}")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            raise ValueError(f"weight of {name.strip()!r} is not a number: {weight!r}") from None
    return out
