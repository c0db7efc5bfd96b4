"""Facts about one customer at an event time: the flat namespace that rules and personas read."""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from river import stats

from models.features import DAY_MS, CustomerProfile, _top
from models.frozen import Frozen
from models.session import SESSION_FACTS, SessionPolicy, session_facts

__all__ = [
    "LIFECYCLE_STAGES",
    "STATIC_FACTS",
    "TIME_FACTS",
    "LifecyclePolicy",
    "PopulationQuantiles",
    "RfmCuts",
    "TimeWatch",
    "customer_facts",
    "is_known_fact",
    "region_of",
    "rfm_values",
]

LIFECYCLE_STAGES = ("new", "active", "at_risk", "lapsed")

_REGIONS = {
    "Western Europe": "DE AT CH FR BE NL LU IE GB MC LI",
    "Southern Europe": "ES PT IT GR MT CY SI HR",
    "Northern Europe": "SE NO DK FI IS EE LV LT",
    "Eastern Europe": "PL CZ SK HU RO BG UA RS BA MK AL MD BY",
    "North America": "US CA MX",
    "Latin America": "BR AR CL CO PE VE UY PY BO EC CR PA DO GT",
    "Asia Pacific": "CN JP KR IN SG HK TW TH VN MY ID PH AU NZ",
    "Middle East & Africa": "AE SA IL TR EG ZA NG KE MA QA KW",
}
_REGION_OF = {c: region for region, codes in _REGIONS.items() for c in codes.split()}
_AGE_BANDS = (
    (18, "under 18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (55, "45-54"),
    (65, "55-64"),
)


def region_of(country: str | None) -> str | None:
    """The marketing region of an ISO 3166 alpha-2 country code.

    >>> region_of("DE"), region_of("us"), region_of("XX")
    ('Western Europe', 'North America', None)
    """
    return _REGION_OF.get(country.upper()) if country else None


def _age_band(age: Any) -> str | None:
    if not isinstance(age, int | float) or isinstance(age, bool) or not 0 < age < 130:
        return None
    for limit, band in _AGE_BANDS:
        if age < limit:
            return band
    return "65+"


@dataclass(frozen=True)
class LifecyclePolicy(Frozen):
    """Lifecycle stages in event time: new for ``new_days`` after first sight; then active,
    at risk or lapsed by days since the last purchase (since the last visit for a non-buyer).

    >>> policy = LifecyclePolicy()
    >>> p = CustomerProfile("c", 1, first_seen_ts=0, last_seen_ts=0, last_purchase_ts=0)
    >>> policy.stage(p, 10 * DAY_MS), policy.stage(p, 45 * DAY_MS), policy.stage(p, 61 * DAY_MS)
    ('new', 'active', 'at_risk')
    >>> policy.next_change(p, 45 * DAY_MS) == 60 * DAY_MS
    True
    """

    new_days: float = 30.0
    at_risk_days: float = 60.0
    lapsed_days: float = 180.0

    def _anchor(self, p: CustomerProfile) -> int:
        anchor = p.last_purchase_ts if p.last_purchase_ts is not None else p.last_seen_ts
        return anchor or 0

    def stage(self, p: CustomerProfile, now: int) -> str:
        if p.first_seen_ts is not None and now - p.first_seen_ts < self.new_days * DAY_MS:
            return "new"
        idle = now - self._anchor(p)
        if idle < self.at_risk_days * DAY_MS:
            return "active"
        if idle < self.lapsed_days * DAY_MS:
            return "at_risk"
        return "lapsed"

    def next_change(self, p: CustomerProfile, now: int) -> int | None:
        """The event time at which the stage will change if nothing else happens, or None."""
        anchor = self._anchor(p)
        first = p.first_seen_ts or 0
        times = (
            first + int(self.new_days * DAY_MS),
            anchor + int(self.at_risk_days * DAY_MS),
            anchor + int(self.lapsed_days * DAY_MS),
        )
        later = [t for t in times if t > now]
        return min(later) if later else None


@dataclass(frozen=True)
class RfmCuts(Frozen):
    """Population quintile cut points of recency (days), frequency and monetary value.

    Scores run 1..5, 5 best: recent, frequent, high spend.

    >>> cuts = RfmCuts((5, 10, 20, 40), (1, 2, 3, 4), (50, 100, 200, 400))
    >>> cuts.scores(3.0, 5.0, 120.0)
    (5, 5, 3)
    """

    recency: tuple[float, ...] = (7.0, 21.0, 45.0, 90.0)
    frequency: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    monetary: tuple[float, ...] = (30.0, 80.0, 200.0, 500.0)

    def __post_init__(self) -> None:
        # Streaming quantile estimates of neighbouring levels can cross while samples are few;
        # a score counts the cuts a value is above, which does not depend on their order.
        for name in ("recency", "frequency", "monetary"):
            object.__setattr__(self, name, tuple(sorted(getattr(self, name))))

    def scores(self, recency: float, frequency: float, monetary: float) -> tuple[int, int, int]:
        # The cuts a value is above: those left of its insertion point in the sorted cuts
        # (bisect_left counts the cuts strictly below it; NaN is above none).
        return (
            5 - bisect_left(self.recency, recency),
            1 + bisect_left(self.frequency, frequency),
            1 + bisect_left(self.monetary, monetary),
        )

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "recency": list(self.recency),
            "frequency": list(self.frequency),
            "monetary": list(self.monetary),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]]) -> RfmCuts:
        return cls(tuple(data["recency"]), tuple(data["frequency"]), tuple(data["monetary"]))


class PopulationQuantiles:
    """Online quintile cut points of buyers' recency, frequency and monetary value (River).

    Kept by the one trainer, so every worker scores RFM against the same population; the
    cut points travel in the model snapshot as plain numbers.

    >>> pop = PopulationQuantiles(min_samples=5)
    >>> for i in range(1, 101):
    ...     pop.update(float(i), i / 10, 10.0 * i)
    >>> cuts = pop.cuts()
    >>> [round(c) for c in cuts.recency], cuts.scores(5.0, 9.5, 990.0)
    ([20, 40, 60, 80], (5, 5, 5))
    """

    QUANTILES = (0.2, 0.4, 0.6, 0.8)

    def __init__(self, min_samples: int = 100) -> None:
        self.min_samples = min_samples
        self._n = 0
        self._stats = {
            name: [stats.Quantile(q) for q in self.QUANTILES]
            for name in ("recency", "frequency", "monetary")
        }

    def update(self, recency: float, frequency: float, monetary: float) -> None:
        self._n += 1
        for name, value in (("recency", recency), ("frequency", frequency), ("monetary", monetary)):
            for quantile in self._stats[name]:
                quantile.update(value)

    def cuts(self) -> RfmCuts | None:
        """The cut points, or None until ``min_samples`` buyers have been seen."""
        if self._n < self.min_samples:
            return None

        def points(name: str) -> tuple[float, ...]:
            return tuple(round(float(q.get() or 0.0), 4) for q in self._stats[name])

        return RfmCuts(points("recency"), points("frequency"), points("monetary"))


_TIERS = {5: "platinum", 4: "gold", 3: "silver"}
# A decayed sum with a 30-day half-life weighs about 30 / ln 2 = 43.3 days of history.
_DECAY_WINDOW_DAYS = 30 / math.log(2)


def rfm_values(p: CustomerProfile, now: int) -> tuple[float, float, float]:
    """Raw recency (days since last purchase), decayed frequency and decayed monetary value."""
    recency = (now - p.last_purchase_ts) / DAY_MS if p.last_purchase_ts is not None else 10_000.0
    return recency, p.frequency_decayed.value_at(now), p.monetary_decayed.value_at(now)


def _days_since(now: int, ts: int) -> float:
    """A ``days_since_*`` fact: days from ``ts`` to ``now``, to three decimals (86.4 s)."""
    return round((now - ts) / DAY_MS, 3)


def _value_estimate(monetary: float) -> float:
    """``customer_value_estimate``: decayed spend scaled to a year."""
    return round(monetary * 365 / _DECAY_WINDOW_DAYS, 2)


def checkout_pending(p: CustomerProfile) -> bool:
    """Whether the customer's newest checkout has no purchase after it (yet)."""
    checkout, bought = p.last_checkout_ts, p.last_purchase_ts
    return checkout is not None and (bought is None or bought < checkout)


def checkout_judged(p: CustomerProfile) -> bool:
    """Whether an evaluation already found the newest checkout abandoned."""
    return p.abandoned_checkout_ts is not None and p.abandoned_checkout_ts == p.last_checkout_ts


def checkout_abandoned(p: CustomerProfile, at: int, sessions: SessionPolicy) -> bool:
    """The ``checkout_abandoned`` fact at event time ``at``: the customer's newest checkout has
    no purchase after it, and they left: the visit it came in, still their newest, is over (no
    visit event for the session timeout). A later visit ends it.

    Read from the newest checkout and purchase times and the newest visit's last event, so
    the same events give the same answer in any order of arrival (a purchase on its own topic
    may come after the next visit's clicks). It turns true at the visit's end, a due time of
    every customer (``SegmentCatalog.next_change``).

    >>> from models.session import Session
    >>> p = CustomerProfile("c", session=Session("s1", 0, 60_000), last_checkout_ts=60_000)
    >>> policy = SessionPolicy(30)
    >>> checkout_abandoned(p, 60_000, policy), checkout_abandoned(p, 60_000 + 1_800_000, policy)
    (False, True)
    >>> p.last_purchase_ts = 70_000  # a purchase after it
    >>> checkout_abandoned(p, 60_000 + 1_800_000, policy)
    False
    """
    checkout, visit = p.last_checkout_ts, p.session
    if checkout is None or visit is None or not checkout_pending(p):
        return False
    return checkout >= visit.start and at >= visit.last + sessions.timeout_ms


def customer_facts(
    p: CustomerProfile,
    now: int,
    policy: LifecyclePolicy = LifecyclePolicy(),  # noqa: B008 - frozen
    cuts: RfmCuts = RfmCuts(),  # noqa: B008 - frozen
    sessions: SessionPolicy = SessionPolicy(),  # noqa: B008 - frozen
    watermark: int = 0,
    dynamic: Collection[str] | None = None,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """Every fact a rule can name, at event time ``now`` (epoch ms).

    The ``session.*`` facts are as of ``watermark`` when it is later than ``now``: a visit
    whose events arrive after it ended in event time (late, or behind other traffic) is not
    the visitor's current one. ``dynamic``: the facts of the dynamic families
    (``device_share.*``, ``traits.*``, ...) to compute, those the rules read (the record shows
    none of them); None: all the profile has. ``only``: just these facts (a definitions
    backfill reads those of the changed rules alone): the parts of this function that compute
    them run, so the dict may hold a few more; its dynamic facts are those named in ``only``.

    >>> p = CustomerProfile("c", devices={"mobile": 3.0, "desktop": 1.0}, traits={"age": 30})
    >>> f = customer_facts(p, 0, dynamic={"device_share.mobile", "device_share.tablet"})
    >>> f["device_share.mobile"], "device_share.desktop" in f, "device_share.tablet" in f
    (0.75, False, False)
    >>> customer_facts(p, 0)["device_share.desktop"], customer_facts(p, 0)["traits.age"]
    (0.25, 30)
    >>> sorted(customer_facts(p, 0, only={"age_band", "traits.age"}))
    ['age_band', 'conversion', 'region', 'search_share', 'top_category', 'traits.age']
    """
    parts = _ALL_PARTS if only is None else _parts_of(frozenset(only))
    facts: dict[str, Any] = p.value_features() if "value" in parts else {}
    if "behavior" in parts:
        facts.update(p.behavior())
    if "days" in parts:
        facts["days_since_last_purchase"] = (
            None if p.last_purchase_ts is None else _days_since(now, p.last_purchase_ts)
        )
        facts["days_since_first_seen"] = _days_since(now, p.first_seen_ts or now)
        facts["days_since_last_seen"] = _days_since(now, p.last_seen_ts or now)
    if "rfm" in parts:
        recency, frequency, monetary = rfm_values(p, now)
        r, f, m = cuts.scores(recency, frequency, monetary)
        bought = bool(p.orders_total)
        facts.update(
            {
                "frequency_decayed": round(frequency, 4),
                "monetary_decayed": round(monetary, 2),
                "rfm_recency": r if bought else None,
                "rfm_frequency": f if bought else None,
                "rfm_monetary": m if bought else None,
                "rfm_score": f"{r}{f}{m}" if bought else None,
                "value_tier": (_TIERS.get(m, "bronze") if bought else None),
                "customer_value_estimate": _value_estimate(monetary),
            }
        )
    if "lifecycle" in parts:
        facts["lifecycle"] = policy.stage(p, now)
    if "mix" in parts:
        clicks = sum(p.counts.values())
        top = facts["top_categories"] if "top_categories" in facts else _top(p.categories, 1)
        facts.update(
            {
                "search_share": round(p.counts.get("search", 0) / clicks, 4) if clicks else 0.0,
                "conversion": (
                    round(min(1.0, p.orders_total / p.sessions), 4) if p.sessions else 0.0
                ),
                "region": region_of(p.country),
                "age_band": _age_band(p.traits.get("age")),
                "top_category": top[0] if top else None,
            }
        )
    if "session" in parts:
        at = now if now >= watermark else watermark
        facts.update(session_facts(p.session, at, sessions))
        # A checkout not judged yet is judged as of the customer's own time, not the
        # watermark: a visit that arrives after it ended (late data, its purchase still on
        # its way on the other topic) is judged at the next due time
        # (``SegmentCatalog.next_change``), not abandoned on arrival. Once judged abandoned,
        # as of the watermark: a late event of an older order does not take it back.
        judged = checkout_judged(p)
        facts["checkout_abandoned"] = checkout_abandoned(p, at if judged else now, sessions)
    if only is not None:
        dynamic = [name for name in only if is_dynamic_fact(name)]
        if not dynamic:
            return facts
    # Each dynamic family: the profile's values and the total a share divides by (None: the
    # value itself), taken only for the families asked for (the rules usually read one or
    # two: the dayparts, a property in local time, and the sums are not paid for the others).
    # A fact is present exactly when the profile has its key.
    families: dict[str, tuple[Mapping[str, Any], float | None]] = {}
    if dynamic is None:
        for family in _FAMILIES:
            families[family] = _family(p, family)
        dynamic = [f"{family}.{key}" for family, (found, _) in families.items() for key in found]
    for fact in dynamic:
        family, _, key = fact.partition(".")
        taken = families.get(family)
        if taken is None:
            taken = families[family] = _family(p, family)
        found, total = taken
        if key in found:
            value = found[key]
            if family == "traits":
                facts[fact] = value
            else:
                facts[fact] = round(value / total, 4) if total else 0.0
    return facts


#: The dynamic families of :func:`customer_facts`, in the order it lists them (``dynamic``
#: None).
_FAMILIES = ("traits", "device_share", "category_share", "spend_share", "daypart_share")
_NO_FAMILY: tuple[Mapping[str, Any], float | None] = ({}, None)


def _family(p: CustomerProfile, family: str) -> tuple[Mapping[str, Any], float | None]:
    """A dynamic family's values in the profile and the total a share divides by (None: the
    value itself, as ``traits``); no values for a family not known."""
    if family == "traits":
        return p.traits, None
    if family == "device_share":
        return p.devices, sum(p.devices.values())
    if family == "category_share":
        return p.categories, sum(p.categories.values())
    if family == "spend_share":
        return p.category_spend, sum(p.category_spend.values())
    if family == "daypart_share":
        dayparts = p.dayparts  # a property (local time): computed once per call
        return dayparts, sum(dayparts.values())
    return _NO_FAMILY


#: The parts of :func:`customer_facts`, in the order it computes them, and the static facts
#: each computes (``rfm`` computes the
#: decayed values at ``now``, over ``behavior``'s at the customer's newest event).
_PARTS: dict[str, tuple[str, ...]] = {
    "value": tuple(CustomerProfile("x").value_features()),
    "behavior": tuple(CustomerProfile("x").behavior()),
    "days": ("days_since_last_purchase", "days_since_first_seen", "days_since_last_seen"),
    "rfm": (
        "frequency_decayed",
        "monetary_decayed",
        "rfm_recency",
        "rfm_frequency",
        "rfm_monetary",
        "rfm_score",
        "value_tier",
        "customer_value_estimate",
    ),
    "lifecycle": ("lifecycle",),
    "mix": ("search_share", "conversion", "region", "age_band", "top_category"),
    "session": (*SESSION_FACTS, "checkout_abandoned"),
}
_ALL_PARTS = frozenset(_PARTS)
_PART_OF: dict[str, str] = {name: part for part, names in _PARTS.items() for name in names}


@functools.lru_cache(maxsize=256)
def _parts_of(names: frozenset[str]) -> frozenset[str]:
    """The parts of :func:`customer_facts` that compute these facts."""
    parts = {_PART_OF[name] for name in names if name in _PART_OF}
    return frozenset(parts)


#: Fact names always present (dynamic families are matched by prefix in :func:`is_known_fact`):
#: every part's, and the customer's cluster and persona (the assignment adds them).
STATIC_FACTS = frozenset(_PART_OF) | {"cluster", "persona"}
_DYNAMIC_PREFIXES = (
    "device_share.",
    "category_share.",
    "spend_share.",
    "daypart_share.",
    "traits.",
)


def is_dynamic_fact(name: str) -> bool:
    """Whether this fact is of a dynamic family (``device_share.*``, ``traits.*``, ...)."""
    return name.startswith(_DYNAMIC_PREFIXES)


def is_known_fact(name: str) -> bool:
    """Whether a rule may name this fact (a typo check at start-up)."""
    return name in STATIC_FACTS or name.startswith(_DYNAMIC_PREFIXES)


# -- facts that move with event time alone ---------------------------------------------------

#: Facts whose value changes as event time passes, with no event of the customer's own. Rules
#: on them change on the watermark: ``lifecycle`` by :meth:`LifecyclePolicy.next_change`, the
#: rest by :class:`TimeWatch` (``days_since_*`` and the decayed values from a rule's own
#: thresholds; ``rfm_*``, ``rfm_score`` and ``value_tier`` from the RFM cut points in force),
#: ``session.*`` and ``checkout_abandoned`` at the session's end
#: (``models.session.SessionPolicy.ends_at``).
TIME_FACTS = frozenset(
    {
        *SESSION_FACTS,
        "checkout_abandoned",
        "days_since_last_purchase",
        "days_since_first_seen",
        "days_since_last_seen",
        "frequency_decayed",
        "monetary_decayed",
        "customer_value_estimate",
        "rfm_recency",
        "rfm_frequency",
        "rfm_monetary",
        "rfm_score",
        "value_tier",
        "lifecycle",
    }
)
#: Time facts a rule compares with numbers of its own.
_THRESHOLD_FACTS = frozenset(
    {
        "days_since_last_purchase",
        "days_since_first_seen",
        "days_since_last_seen",
        "frequency_decayed",
        "monetary_decayed",
        "customer_value_estimate",
    }
)
#: Time facts scored against the population's RFM cut points: which raw values they read.
_RFM_INPUTS: Mapping[str, tuple[str, ...]] = {
    "rfm_recency": ("recency",),
    "rfm_frequency": ("frequency",),
    "rfm_monetary": ("monetary",),
    "rfm_score": ("recency", "frequency", "monetary"),
    "value_tier": ("monetary",),
}
_ANCHORS = {
    "days_since_last_purchase": "last_purchase_ts",
    "days_since_first_seen": "first_seen_ts",
    "days_since_last_seen": "last_seen_ts",
}
#: A crossing further ahead than this is taken as never (a century of event time).
_HORIZON_MS = 100 * 365 * DAY_MS


class _Clock(NamedTuple):
    """One fact as a monotone function of event time ``t`` (epoch ms)."""

    value: Callable[[int], float]  # exactly as customer_facts computes it at t
    rising: bool
    half: float  # half a unit of the fact's rounding (0: not rounded)
    reach: Callable[[float], float | None]  # about when the unrounded value is x; None: never


def _clock(name: str, p: CustomerProfile) -> _Clock | None:
    """The clock of a time fact (or of ``recency`` / ``frequency`` / ``monetary``, the raw
    RFM values), or None if it does not move for this customer."""
    anchor_field = _ANCHORS.get(name)
    if anchor_field is not None or name == "recency":
        anchor: int | None = getattr(p, anchor_field or "last_purchase_ts")
        if anchor is None:
            return None

        def rising_at(x: float) -> float:
            return anchor + x * DAY_MS

        if name == "recency":
            return _Clock(lambda t: (t - anchor) / DAY_MS, True, 0.0, rising_at)
        return _Clock(lambda t: _days_since(t, anchor), True, 0.0005, rising_at)
    if name in ("frequency_decayed", "frequency"):
        decayed = p.frequency_decayed
    elif name in ("monetary_decayed", "customer_value_estimate", "monetary"):
        decayed = p.monetary_decayed
    else:
        return None
    scale = 365 / _DECAY_WINDOW_DAYS if name == "customer_value_estimate" else 1.0

    def falling_at(x: float) -> float | None:
        start = decayed.value * scale
        if x <= 0 or start <= 0:
            return None
        return decayed.ref_ts + decayed.halflife * math.log2(start / x)

    if name == "frequency_decayed":
        return _Clock(lambda t: round(decayed.value_at(t), 4), False, 0.00005, falling_at)
    if name == "monetary_decayed":
        return _Clock(lambda t: round(decayed.value_at(t), 2), False, 0.005, falling_at)
    if name == "customer_value_estimate":
        return _Clock(lambda t: _value_estimate(decayed.value_at(t)), False, 0.005, falling_at)
    return _Clock(decayed.value_at, False, 0.0, falling_at)


def _first_change(
    value: Callable[[int], float],
    now: int,
    start: bool,
    c: float,
    inclusive: bool,
    guess: float,
    before: int | None,
) -> int | None:
    """The first event time after ``now`` at which ``value(t) >= c`` (``inclusive``) or
    ``value(t) > c`` turns from ``start`` (its truth at ``now``), for a monotone ``value``;
    found exactly, starting near ``guess``. None if it does not turn by ``before`` (an earlier
    due time already found), if given."""

    def holds(t: int) -> bool:
        v = value(t)
        return v >= c if inclusive else v > c

    def moved(t: int) -> bool:
        return holds(t) != start

    if before is not None and not moved(before):
        return None  # later than a due time already found: the search is not needed
    if not guess - now < _HORIZON_MS:  # also a nan guess
        return None
    hi = max(now + 1, math.ceil(guess))
    step = 1
    if moved(hi):  # walk back from the guess to a time that has not moved yet
        lo = now
        while hi - step > now:
            if not moved(hi - step):
                lo = hi - step
                break
            hi -= step
            step *= 2
    else:  # walk on from the guess to a time that has moved
        lo = hi
        while True:
            if lo + step - now > _HORIZON_MS:
                return None
            if moved(lo + step):
                hi = lo + step
                break
            lo += step
            step *= 2
    while hi - lo > 1:  # at lo the comparison is as at now, at hi it has turned
        mid = (lo + hi) // 2
        if moved(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _next_crossing(
    clock: _Clock,
    inclusive: Sequence[float],
    exclusive: Sequence[float],
    now: int,
    best: int | None,
) -> int | None:
    """When ``fact >= c`` (``c`` in ``inclusive``) or ``fact > c`` (in ``exclusive``) next
    turns for the clock's fact, both sorted, if before ``best`` (else ``best``). Per kind,
    only the nearest threshold ahead of the fact in its direction can turn first."""
    v0 = clock.value(now)
    for numbers, closed in ((inclusive, True), (exclusive, False)):
        if not numbers:
            continue
        if clock.rising:  # the smallest threshold the comparison does not hold for yet
            i = bisect_right(numbers, v0) if closed else bisect_left(numbers, v0)
            if i == len(numbers):
                continue
        else:  # the largest threshold it still holds for
            i = (bisect_right(numbers, v0) if closed else bisect_left(numbers, v0)) - 1
            if i < 0:
                continue
        c = numbers[i]
        # A rounded fact reaches c half a unit early and passes it half a unit late; falling
        # to a threshold under half a unit, it turns when it rounds to zero.
        target = c - clock.half if closed else c + clock.half
        if not clock.rising and clock.half and target <= 0:
            target = clock.half
        guess = clock.reach(target)
        if guess is None:
            continue
        start = v0 >= c if closed else v0 > c
        found = _first_change(clock.value, now, start, c, closed, guess, best)
        if found is not None and (best is None or found < best):
            best = found
    return best


@dataclass(frozen=True)
class TimeWatch(Frozen):
    """What the rules compare facts that move with event time alone against, so that a
    customer's next due time covers every rule's next threshold crossing.

    ``thresholds``: per fact (``days_since_*``, ``frequency_decayed``, ``monetary_decayed``,
    ``customer_value_estimate``), the sorted numbers ``c`` rules test as ``fact >= c`` and
    as ``fact > c`` (``models.rules.Threshold``). ``rfm``: the raw RFM values (``recency``,
    ``frequency``, ``monetary``) whose quintile cut points some rule reads through ``rfm_*``,
    ``rfm_score`` or ``value_tier``. ``lifecycle`` is the :class:`LifecyclePolicy`'s own.

    Between now and the due time every watched comparison holds as it does now, so every
    rule's truth is constant; at the due time one of them turns. A fact is rounded as
    :func:`customer_facts` rounds it, and the due time is the first millisecond at which the
    rounded fact compares otherwise.

    >>> watch = TimeWatch.of({"days_since_last_purchase"},
    ...                      [("days_since_last_purchase", 90, False)])   # gt: 90
    >>> p = CustomerProfile("c", 1, first_seen_ts=0, last_seen_ts=0, last_purchase_ts=0)
    >>> due = watch.next_change(p, 0)
    >>> _days_since(due - 1, 0), _days_since(due, 0)
    (90.0, 90.001)
    """

    thresholds: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...] = ()
    rfm: tuple[str, ...] = ()

    @classmethod
    def of(cls, fields: Iterable[str], thresholds: Iterable[tuple[str, float, bool]]) -> TimeWatch:
        """The watch for rules naming ``fields`` with ``thresholds``: (fact, number,
        inclusive) triples, as ``models.rules.Threshold``."""
        numbers: dict[str, tuple[set[float], set[float]]] = {}
        for fact, number, inclusive in thresholds:
            if fact in _THRESHOLD_FACTS:
                numbers.setdefault(fact, (set(), set()))[0 if inclusive else 1].add(float(number))
        raw = {name for fact in fields for name in _RFM_INPUTS.get(fact, ())}
        return cls(
            tuple(
                (fact, tuple(sorted(closed)), tuple(sorted(open_)))
                for fact, (closed, open_) in sorted(numbers.items())
            ),
            tuple(sorted(raw)),
        )

    def __bool__(self) -> bool:
        return bool(self.thresholds or self.rfm)

    def next_change(
        self,
        p: CustomerProfile,
        now: int,
        cuts: RfmCuts = RfmCuts(),  # noqa: B008 - frozen
        before: int | None = None,
    ) -> int | None:
        """The first event time after ``now`` at which a watched comparison turns, or None;
        ``before`` if none turns earlier than it (a due time the caller has already)."""
        best = before
        for fact, closed, open_ in self.thresholds:
            clock = _clock(fact, p)
            if clock is not None:
                best = _next_crossing(clock, closed, open_, now, best)
        if self.rfm and p.orders_total:
            for name in self.rfm:  # RfmCuts.scores counts cuts the raw value is above
                clock = _clock(name, p)
                if clock is not None:
                    best = _next_crossing(clock, (), sorted(getattr(cuts, name)), now, best)
        return best
