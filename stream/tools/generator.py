"""Demo and eval traffic from a handful of known personas, with realistic overlap.

The truth (each customer's persona) goes to a side file only, never into the events. What
makes it realistic (``Realism``): every customer varies around their persona's means (devices,
categories, hours, prices, basket, how often they visit); personas overlap in hours,
categories, prices, countries and channels; a share of customers is mixed (each session drawn
from one of two personas); a share switches persona mid-stream; one-visit bounces; a few bots
with huge click counts; customers live in several time zones (preferred hours are local, and
identify events carry a ``timezone`` trait, an IANA name).
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import itertools
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "BOT",
    "GENERATOR_PERSONAS",
    "Customer",
    "Message",
    "PersonaBehavior",
    "Realism",
    "Taste",
    "TrafficGenerator",
    "parse_mix",
]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class PersonaBehavior:
    """How one kind of customer behaves on average: the generator's ground truth.

    ``hours`` are preferred hours of day in the customer's local time; every customer of the
    persona varies around these means (``Realism.variation``).
    """

    name: str
    weight: float
    devices: dict[str, float]
    hours: tuple[int, ...]
    categories: dict[str, float]
    views: tuple[int, int]  # product views per session
    page_views: tuple[int, int]
    searches: tuple[int, int]
    cart_prob: float  # a session adds to cart
    buy_prob: float  # a session with a cart ends in a purchase
    order_value: tuple[float, float]  # mean and spread of a purchase
    price: tuple[float, float]  # viewed product prices
    countries: dict[str, float]
    channels: dict[str, float]
    traits: dict[str, Any] = field(default_factory=dict)
    visits: float = 1.0  # how often a customer of this persona visits, relative to others


GENERATOR_PERSONAS: tuple[PersonaBehavior, ...] = (
    PersonaBehavior(
        "Executive Ella",
        0.2,
        {"desktop": 0.5, "mobile": 0.45, "tablet": 0.05},
        (12, 19, 20, 21, 22),
        {
            "designer-dresses": 0.45,
            "handbags": 0.25,
            "shoes": 0.15,
            "home-decor": 0.1,
            "electronics": 0.05,
        },
        (2, 5),
        (1, 2),
        (0, 1),
        0.75,
        0.8,
        (320.0, 90.0),
        (250.0, 90.0),
        {"DE": 0.35, "GB": 0.25, "FR": 0.2, "US": 0.2},
        {"email": 0.6, "direct": 0.25, "social": 0.15},
        {"age": 45, "gender": "f", "income_band": "high", "interests": ["fashion", "travel"]},
        1.0,
    ),
    PersonaBehavior(
        "Bargain Ben",
        0.25,
        {"mobile": 0.8, "tablet": 0.1, "desktop": 0.1},
        (7, 8, 12, 13, 21),
        {"electronics": 0.4, "gadgets": 0.3, "outlet": 0.15, "shoes": 0.1, "software": 0.05},
        (5, 12),
        (2, 4),
        (2, 6),
        0.6,
        0.35,
        (30.0, 12.0),
        (30.0, 15.0),
        {"US": 0.45, "CA": 0.25, "GB": 0.15, "DE": 0.15},
        {"coupon": 0.55, "social": 0.25, "direct": 0.2},
        {"age": 24, "gender": "m", "income_band": "low", "interests": ["gaming", "deals"]},
        1.2,
    ),
    PersonaBehavior(
        "Browsing Bella",
        0.25,
        {"tablet": 0.6, "mobile": 0.3, "desktop": 0.1},
        (13, 14, 15, 16, 20),
        {"home-decor": 0.5, "garden": 0.3, "shoes": 0.1, "designer-dresses": 0.1},
        (8, 20),
        (3, 8),
        (0, 2),
        0.5,
        0.08,
        (60.0, 20.0),
        (80.0, 35.0),
        {"FR": 0.35, "ES": 0.3, "GB": 0.15, "US": 0.2},
        {"social": 0.6, "email": 0.2, "coupon": 0.2},
        {"age": 33, "gender": "f", "income_band": "medium", "interests": ["interiors"]},
        1.0,
    ),
    PersonaBehavior(
        "Loyal Larry",
        0.2,
        {"desktop": 0.7, "mobile": 0.25, "tablet": 0.05},
        (8, 9, 10, 11, 18),
        {"groceries": 0.6, "household": 0.3, "garden": 0.1},
        (1, 3),
        (0, 1),
        (0, 1),
        0.9,
        0.9,
        (65.0, 15.0),
        (8.0, 4.0),
        {"GB": 0.5, "IE": 0.2, "DE": 0.15, "US": 0.15},
        {"direct": 0.7, "email": 0.3},
        {"age": 58, "gender": "m", "income_band": "medium", "interests": ["cooking"]},
        1.3,
    ),
    PersonaBehavior(
        "Techie Tom",
        0.1,
        {"desktop": 0.85, "mobile": 0.15},
        (0, 1, 2, 20, 22, 23),
        {"software": 0.5, "servers": 0.3, "electronics": 0.2},
        (3, 7),
        (1, 3),
        (2, 4),
        0.65,
        0.7,
        (900.0, 250.0),
        (700.0, 250.0),
        {"US": 0.5, "DE": 0.3, "GB": 0.2},
        {"partner": 0.6, "direct": 0.3, "email": 0.1},
        {"age": 38, "industry": "software", "company_size": 500, "interests": ["devops"]},
        0.8,
    ),
)

#: Bots: no persona; crawl every category at any hour, hundreds of clicks a visit, never buy.
BOT = PersonaBehavior(
    "bot",
    0.0,
    {"desktop": 1.0},
    tuple(range(24)),
    {},
    (60, 250),
    (5, 20),
    (0, 5),
    0.0,
    0.0,
    (0.0, 0.0),
    (300.0, 300.0),
    {"US": 1.0},
    {"direct": 1.0},
)

#: Time zones of each country (IANA names) and their shares of its customers.
ZONES: dict[str, dict[str, float]] = {
    "DE": {"Europe/Berlin": 1.0},
    "GB": {"Europe/London": 1.0},
    "FR": {"Europe/Paris": 1.0},
    "ES": {"Europe/Madrid": 0.9, "Atlantic/Canary": 0.1},
    "IE": {"Europe/Dublin": 1.0},
    "US": {
        "America/New_York": 0.45,
        "America/Chicago": 0.25,
        "America/Denver": 0.08,
        "America/Los_Angeles": 0.22,
    },
    "CA": {"America/Toronto": 0.6, "America/Vancouver": 0.4},
}


@dataclass(frozen=True)
class Realism:
    """How far generated traffic departs from five clean, separable personas.

    ``variation`` scales every customer's spread around their persona's means (0: each
    customer behaves exactly as the persona's means say); ``mixed`` and ``switchers`` are
    shares of customers; ``bounces`` the share of picked sessions that are a new visitor's one
    page view; ``bots`` the share of customers that are bots; ``zones``: customers live in
    their country's time zones (otherwise every customer's local time is UTC).
    """

    variation: float = 1.0
    mixed: float = 0.10
    switchers: float = 0.05
    bounces: float = 0.10
    bots: float = 0.003
    zones: bool = True

    def __post_init__(self) -> None:
        for name in ("variation", "mixed", "switchers", "bounces", "bots"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.mixed + self.switchers + self.bots > 1 or self.bounces >= 1:
            raise ValueError("mixed + switchers + bots must be at most 1, bounces below 1")

    @classmethod
    def none(cls) -> Realism:
        """Clean personas: no variation, no mixed, switching, bouncing or bot customers, UTC."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, False)


@dataclass(frozen=True, slots=True)
class Taste:
    """One customer's own version of a persona (their means around the persona's)."""

    persona: PersonaBehavior
    devices: dict[str, float]
    categories: dict[str, float]
    hour_shift: int
    price_factor: float
    order_factor: float
    views_factor: float
    cart_prob: float
    buy_prob: float
    channel: str


@dataclass(slots=True)
class Customer:
    """A generated customer: ``kind`` is pure, mixed, switcher or bot.

    A mixed customer draws each session from one of ``tastes`` by weight (the first is their
    persona); a switcher behaves as ``tastes[0]`` for ``switch_after`` sessions, then as
    ``then``.
    """

    customer_id: str
    kind: str
    tastes: list[tuple[Taste, float]]
    country: str
    timezone: str
    activity: float
    traits: dict[str, Any]
    then: Taste | None = None
    switch_after: int = 0
    sessions: int = 0

    @property
    def persona(self) -> PersonaBehavior:
        """What the customer is now: a switcher's new persona once switched."""
        if self.then is not None and self.sessions > self.switch_after:
            return self.then.persona
        return self.tastes[0][0].persona


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
    """Sessions of a fixed population of customers (plus one-visit bounces).

    ``start_ms`` is the event time of the first session; each session moves the event clock
    on by ``session_gap_ms``. Deterministic for a given seed. ``arrays=True`` sends a
    session's clickstream events as one JSON array (one customer per message). ``realism``
    says how far the traffic departs from clean personas (:class:`Realism`).

    ``truth`` maps every customer id to their persona now (a switcher's changes when they
    switch; bots map to :data:`BOT`); ``customers`` holds the details.

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
        realism: Realism | None = None,
    ) -> None:
        if customers < 1:
            raise ValueError("customers must be at least 1")
        if not personas:
            raise ValueError("at least one persona")
        self.rng = random.Random(seed)
        self.arrays = arrays
        self.personas = personas
        self.realism = realism = realism if realism is not None else Realism()
        self.clock = start_ms
        self.session_gap_ms = session_gap_ms
        self.not_after = not_after
        self.prefix = prefix
        self.run = run = uuid.UUID(int=self.rng.getrandbits(128)).hex[:6]
        self.customers: dict[str, Customer] = {}
        bots = round(customers * realism.bots)
        for i in range(customers):
            customer_id = f"{prefix}-{run}-{i:06d}"
            self.customers[customer_id] = self._customer(customer_id, bot=i < bots)
        self.customer_ids = list(self.customers)
        self.truth: dict[str, PersonaBehavior] = {
            c: spec.persona for c, spec in self.customers.items()
        }
        self._cumulative = list(itertools.accumulate(s.activity for s in self.customers.values()))
        self._identified: set[str] = set()
        self._bounces: set[str] = set()
        self.bounced = 0
        self._counter = 0
        self.mix: dict[str, float] | None = None
        self._by_persona: dict[str, list[str]] = {}
        for customer_id, spec in self.customers.items():
            if spec.kind != "bot":
                self._by_persona.setdefault(spec.persona.name, []).append(customer_id)

    # -- the population ---------------------------------------------------------------------

    def _customer(self, customer_id: str, bot: bool) -> Customer:
        rng, realism = self.rng, self.realism
        if bot:
            taste = Taste(BOT, dict(BOT.devices), {}, 0, 1.0, 1.0, 1.0, 0.0, 0.0, "direct")
            return Customer(customer_id, "bot", [(taste, 1.0)], "US", "UTC", 3.0, {})
        weights = [p.weight for p in self.personas]
        persona = rng.choices(self.personas, weights)[0]
        taste = self._taste(persona)
        country = _pick(rng, persona.countries)
        zone = _pick(rng, ZONES.get(country, {"UTC": 1.0})) if realism.zones else "UTC"
        v = realism.variation
        activity = persona.visits * rng.lognormvariate(0.0, 0.5 * v)
        traits = dict(persona.traits)
        if "age" in traits and v > 0:
            traits["age"] = int(traits["age"]) + rng.randint(-6, 6)
        traits["timezone"] = zone
        spec = Customer(customer_id, "pure", [(taste, 1.0)], country, zone, activity, traits)
        draw = rng.random()
        others = [p for p in self.personas if p is not persona]
        if others and draw < realism.mixed:
            other = rng.choices(others, [p.weight for p in others])[0]
            share = rng.uniform(0.6, 0.85)
            spec.kind = "mixed"
            spec.tastes = [(taste, share), (self._taste(other), 1.0 - share)]
        elif others and draw < realism.mixed + realism.switchers:
            other = rng.choices(others, [p.weight for p in others])[0]
            spec.kind = "switcher"
            spec.then = self._taste(other)
            spec.switch_after = rng.randint(2, 5)
        return spec

    def _taste(self, persona: PersonaBehavior) -> Taste:
        """One customer's means around the persona's, spread by ``Realism.variation``."""
        rng, v = self.rng, self.realism.variation
        price = rng.lognormvariate(0.0, 0.35 * v)
        return Taste(
            persona,
            _vary(rng, persona.devices, v, 15.0),
            _vary(rng, persona.categories, v, 12.0),
            round(rng.gauss(0.0, 1.2 * v)),
            price,
            price * rng.lognormvariate(0.0, 0.15 * v),
            rng.lognormvariate(0.0, 0.3 * v),
            _clip(persona.cart_prob + rng.gauss(0.0, 0.1 * v)),
            _clip(persona.buy_prob + rng.gauss(0.0, 0.1 * v)),
            _pick(rng, persona.channels),
        )

    def kind(self, customer_id: str) -> str:
        """pure, mixed, switcher, bot, or bounce (a one-visit visitor outside the population)."""
        spec = self.customers.get(customer_id)
        return spec.kind if spec is not None else "bounce"

    def shift(self, mix: dict[str, float]) -> None:
        """From now on, pick each session's persona by these weights (a persona-mix switch).

        Before a shift customers visit as often as their activity says, so sessions roughly
        follow the personas' population weights; afterwards, e.g. ``{"Bargain Ben": 0.6}``
        makes 60% of sessions Bargain Ben's (customers whose persona was Ben at the start).
        Personas not named share what is left equally.

        >>> g = TrafficGenerator(customers=200, seed=1)
        >>> g.shift({"Bargain Ben": 1.0})
        >>> {g.customers[m[0].key].tastes[0][0].persona.name
        ...  for m in (g.session(g.pick()) for _ in range(20))}
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
        """The customer of the next session: a new one-visit visitor ``Realism.bounces`` of
        the time, otherwise a customer of the population by their activity (or, after a
        :meth:`shift`, of the persona drawn by the mix)."""
        rng = self.rng
        if self.mix is not None:
            persona = _pick(rng, self.mix)
            return rng.choice(self._by_persona[persona])
        if self.realism.bounces and rng.random() < self.realism.bounces:
            self.bounced += 1
            visitor = f"{self.prefix}-{self.run}-v{self.bounced:07d}"
            self._bounces.add(visitor)
            return visitor
        return self.customer_ids[
            bisect.bisect(self._cumulative, rng.random() * self._cumulative[-1])
        ]

    def sessions(self) -> Iterator[list[Message]]:
        """An endless stream of sessions, each a list of messages."""
        while True:
            yield self.session(self.pick())

    # -- one session ---------------------------------------------------------------------------

    def session(self, customer_id: str) -> list[Message]:
        """The messages of one session of ``customer_id`` (a customer or a picked bounce)."""
        rng = self.rng
        self.clock += self.session_gap_ms
        if self.not_after is not None:
            self.clock = min(self.clock, self.not_after() - HOUR_MS)
        if customer_id in self._bounces:
            self._bounces.discard(customer_id)
            return self._bounce(customer_id)
        spec = self.customers[customer_id]
        spec.sessions += 1
        if spec.then is not None and spec.sessions > spec.switch_after:
            taste = spec.then
            self.truth[customer_id] = taste.persona
        elif len(spec.tastes) == 1:
            taste = spec.tastes[0][0]
        else:
            taste = rng.choices([t for t, _ in spec.tastes], [w for _, w in spec.tastes])[0]
        persona = taste.persona
        jitter = round(rng.gauss(0.0, 0.8 * self.realism.variation))
        hour = (rng.choice(persona.hours) + taste.hour_shift + jitter) % 24
        ts = self._local(hour, spec.timezone)
        session_id = self._id("s")
        device = _pick(rng, taste.devices)
        messages: list[Message] = []
        if customer_id not in self._identified and spec.kind != "bot":
            self._identified.add(customer_id)
            messages.append(
                Message(
                    "identify",
                    customer_id,
                    {
                        "event_id": self._id("e"),
                        "customer_id": customer_id,
                        "ts": ts,
                        "traits": dict(spec.traits),
                    },
                )
            )
        clicks: list[dict[str, Any]] = []
        bot = spec.kind == "bot"
        step = (500, 3_000) if bot else (5_000, 60_000)

        def click(kind: str, **extra: Any) -> None:
            nonlocal ts
            ts += rng.randrange(*step)
            clicks.append(
                {
                    "event_id": self._id("e"),
                    "type": kind,
                    "customer_id": customer_id,
                    "ts": ts,
                    "session_id": session_id,
                    "device": device,
                    "country": spec.country,
                    "channel": taste.channel,
                    **extra,
                }
            )

        for _ in range(rng.randint(*persona.page_views)):
            click("page_view", page="/")
        for _ in range(rng.randint(*persona.searches)):
            click("search", page="/search")
        basket: list[tuple[str, str, float]] = []
        views = max(1, round(rng.randint(*persona.views) * taste.views_factor))
        categories = taste.categories or self._all_categories()
        mean, spread = persona.price
        for _ in range(views):
            category = _pick(rng, categories)
            product = f"p-{category}-{rng.randrange(200)}"
            if bot:
                price = round(rng.uniform(1.0, 2 * mean), 2)
            else:
                price = round(
                    max(1.0, rng.gauss(mean * taste.price_factor, spread * taste.price_factor)), 2
                )
            click(
                "product_view",
                page=f"/{category}/{product}",
                category=category,
                product_id=product,
                price=price,
            )
            basket.append((category, product, price))
        if basket and rng.random() < taste.cart_prob:
            category, product, price = rng.choice(basket)
            click("add_to_cart", category=category, product_id=product, price=price)
            if rng.random() < taste.buy_prob:
                click("checkout_start")
                mean, spread = persona.order_value
                amount = round(
                    max(1.0, rng.gauss(mean * taste.order_factor, spread * taste.order_factor)), 2
                )
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
                    "country": spec.country,
                    "session_id": session_id,
                    "device": device,
                }
                messages.extend(self._clicks(customer_id, clicks))
                messages.append(Message("purchases", customer_id, purchase))
                return messages
        messages.extend(self._clicks(customer_id, clicks))
        return messages

    def _bounce(self, visitor: str) -> list[Message]:
        """A new visitor's one page view (anonymous: no identify), at any hour."""
        rng = self.rng
        persona = rng.choices(self.personas, [p.weight for p in self.personas])[0]
        day = (self.clock // DAY_MS) * DAY_MS
        ts = day + rng.randrange(DAY_MS)
        if ts > self.clock:
            ts -= DAY_MS
        category = _pick(rng, persona.categories) if persona.categories else "home"
        click = {
            "event_id": self._id("e"),
            "type": "page_view",
            "customer_id": visitor,
            "ts": ts,
            "session_id": self._id("s"),
            "device": _pick(rng, persona.devices),
            "country": _pick(rng, persona.countries),
            "channel": _pick(rng, persona.channels),
            "page": f"/{category}",
        }
        return self._clicks(visitor, [click])

    def _local(self, hour: int, zone: str) -> int:
        """A time in the last day before the clock at ``hour`` local time in ``zone``."""
        offset = _offset_ms(zone, self.clock)
        local_clock = self.clock + offset
        local = (local_clock // DAY_MS) * DAY_MS + hour * HOUR_MS + self.rng.randrange(HOUR_MS // 2)
        if local > local_clock:
            local -= DAY_MS
        return local - offset

    def _all_categories(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.personas:
            for c in p.categories:
                out[c] = 1.0
        return out

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
        """Write ``customer_id,persona,kind`` for the customers seen (or all) to a CSV side
        file: the persona each is now (``bot`` for bots; one-visit bounces are left out)."""
        rows = [
            (c, p.name, self.customers[c].kind)
            for c, p in self.truth.items()
            if only is None or c in only
        ]
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["customer_id", "persona", "kind"])
            writer.writerows(rows)
        return len(rows)


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def _vary(
    rng: random.Random, weights: dict[str, float], v: float, concentration: float
) -> dict[str, float]:
    """Shares drawn around ``weights`` (a Dirichlet; ``v`` 0 keeps them as they are)."""
    if v <= 0:
        return dict(weights)
    drawn = {k: rng.gammavariate(w * concentration / v, 1.0) for k, w in weights.items() if w > 0}
    total = sum(drawn.values())
    if total <= 0:
        return dict(weights)
    return {k: d / total for k, d in drawn.items() if d > 0}


def _clip(p: float) -> float:
    return min(0.98, max(0.02, p))


_ZONE_CACHE: dict[str, ZoneInfo] = {}


def _offset_ms(zone: str, ts_ms: int) -> int:
    """The UTC offset of ``zone`` at ``ts_ms``, in ms."""
    if zone == "UTC":
        return 0
    info = _ZONE_CACHE.get(zone)
    if info is None:
        info = _ZONE_CACHE[zone] = ZoneInfo(zone)
    at = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
    delta = info.utcoffset(at)
    return int(delta.total_seconds() * 1000) if delta is not None else 0


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
