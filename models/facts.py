"""Facts about one customer at an event time: the flat namespace that rules and personas read."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from river import stats

from models.features import DAY_MS, CustomerProfile

__all__ = [
    "LIFECYCLE_STAGES",
    "STATIC_FACTS",
    "LifecyclePolicy",
    "PopulationQuantiles",
    "RfmCuts",
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
class LifecyclePolicy:
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
class RfmCuts:
    """Population quintile cut points of recency (days), frequency and monetary value.

    Scores run 1..5, 5 best: recent, frequent, high spend.

    >>> cuts = RfmCuts((5, 10, 20, 40), (1, 2, 3, 4), (50, 100, 200, 400))
    >>> cuts.scores(3.0, 5.0, 120.0)
    (5, 5, 3)
    """

    recency: tuple[float, ...] = (7.0, 21.0, 45.0, 90.0)
    frequency: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    monetary: tuple[float, ...] = (30.0, 80.0, 200.0, 500.0)

    def scores(self, recency: float, frequency: float, monetary: float) -> tuple[int, int, int]:
        r = 5 - sum(1 for cut in self.recency if recency > cut)
        f = 1 + sum(1 for cut in self.frequency if frequency > cut)
        m = 1 + sum(1 for cut in self.monetary if monetary > cut)
        return r, f, m

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


def customer_facts(
    p: CustomerProfile,
    now: int,
    policy: LifecyclePolicy = LifecyclePolicy(),  # noqa: B008 - frozen
    cuts: RfmCuts = RfmCuts(),  # noqa: B008 - frozen
) -> dict[str, Any]:
    """Every fact a rule can name, at event time ``now`` (epoch ms)."""
    facts: dict[str, Any] = {**p.value_features(), **p.behavior()}
    recency, frequency, monetary = rfm_values(p, now)
    r, f, m = cuts.scores(recency, frequency, monetary)
    clicks = sum(p.counts.values())
    devices = sum(p.devices.values())
    spend = sum(p.category_spend.values())
    views = sum(p.categories.values())
    facts.update(
        {
            "days_since_last_purchase": None if p.last_purchase_ts is None else round(recency, 3),
            "days_since_first_seen": round((now - (p.first_seen_ts or now)) / DAY_MS, 3),
            "days_since_last_seen": round((now - (p.last_seen_ts or now)) / DAY_MS, 3),
            "frequency_decayed": round(frequency, 4),
            "monetary_decayed": round(monetary, 2),
            "rfm_recency": r if p.orders_total else None,
            "rfm_frequency": f if p.orders_total else None,
            "rfm_monetary": m if p.orders_total else None,
            "rfm_score": f"{r}{f}{m}" if p.orders_total else None,
            "value_tier": (_TIERS.get(m, "bronze") if p.orders_total else None),
            "customer_value_estimate": round(monetary * 365 / _DECAY_WINDOW_DAYS, 2),
            "lifecycle": policy.stage(p, now),
            "search_share": round(p.counts.get("search", 0) / clicks, 4) if clicks else 0.0,
            "conversion": round(min(1.0, p.orders_total / p.sessions), 4) if p.sessions else 0.0,
            "region": region_of(p.country),
            "age_band": _age_band(p.traits.get("age")),
            "top_category": facts["top_categories"][0] if facts["top_categories"] else None,
        }
    )
    for device, n in p.devices.items():
        facts[f"device_share.{device}"] = round(n / devices, 4)
    for category, n in p.categories.items():
        facts[f"category_share.{category}"] = round(n / views, 4)
    for category, amount in p.category_spend.items():
        facts[f"spend_share.{category}"] = round(amount / spend, 4) if spend else 0.0
    for daypart, n in p.dayparts.items():
        facts[f"daypart_share.{daypart}"] = round(n / sum(p.dayparts.values()), 4)
    for name, value in p.traits.items():
        facts[f"traits.{name}"] = value
    return facts


#: Fact names always present (dynamic families are matched by prefix in :func:`is_known_fact`).
STATIC_FACTS = frozenset(
    {
        *CustomerProfile("x").value_features(),
        *CustomerProfile("x").behavior(),
        "days_since_last_purchase",
        "days_since_first_seen",
        "days_since_last_seen",
        "rfm_recency",
        "rfm_frequency",
        "rfm_monetary",
        "rfm_score",
        "value_tier",
        "customer_value_estimate",
        "lifecycle",
        "conversion",
        "search_share",
        "region",
        "age_band",
        "top_category",
        "cluster",
        "persona",
    }
)
_DYNAMIC_PREFIXES = (
    "device_share.",
    "category_share.",
    "spend_share.",
    "daypart_share.",
    "traits.",
)


def is_known_fact(name: str) -> bool:
    """Whether a rule may name this fact (a typo check at start-up)."""
    return name in STATIC_FACTS or name.startswith(_DYNAMIC_PREFIXES)
