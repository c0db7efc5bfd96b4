"""Named personas (pattern cards): prototypes in readable units, nearest match with reasons."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.features import FEATURE_VECTOR, squash

__all__ = ["PROTOTYPE_FIELDS", "Persona", "PersonaCatalog", "PersonaMatch"]

#: Readable prototype fields and how each maps onto the clustering vector (same transforms).
PROTOTYPE_FIELDS: dict[str, tuple[str, float | None]] = {
    "avg_order_value": ("monetary", 1000.0),  # currency units
    "orders_per_month": ("frequency", 20.0),  # decayed purchase count (30-day half-life)
    "conversion": ("conversion", None),  # orders per session, 0..1
    "views_per_session": ("browse_depth", 30.0),
    "search_share": ("search_share", None),  # share of clicks that are searches
    "cart_abandonment": ("cart_abandonment", None),
    "mobile_share": ("mobile_share", None),
    "desktop_share": ("desktop_share", None),
    "tablet_share": ("tablet_share", None),
    "avg_viewed_price": ("price_level", 1000.0),  # currency units
    "night_share": ("night_share", None),  # share of activity 0-6 h
    "morning_share": ("morning_share", None),  # 6-12 h
    "afternoon_share": ("afternoon_share", None),  # 12-18 h
    "evening_share": ("evening_share", None),  # 18-24 h
}
_READABLE = {vector: name for name, (vector, _) in PROTOTYPE_FIELDS.items()}


@dataclass(frozen=True)
class Persona:
    """A named persona: a description, a prototype (readable units) and optional traits."""

    name: str
    description: str
    prototype: Mapping[str, float]
    traits: Mapping[str, Any] = field(default_factory=dict)

    def vector(self) -> dict[str, float]:
        """The prototype in clustering space; fields not given sit at the middle, 0.5."""
        out = dict.fromkeys(FEATURE_VECTOR, 0.5)
        for name, value in self.prototype.items():
            target, scale = PROTOTYPE_FIELDS[name]
            out[target] = squash(value, scale) if scale else min(1.0, max(0.0, float(value)))
        return out


@dataclass(frozen=True, slots=True)
class PersonaMatch:
    name: str
    confidence: float
    reasons: tuple[str, ...]


class PersonaCatalog:
    """Every customer gets the nearest persona, a confidence and the features that decided it.

    >>> ella = Persona("Ella", "", {"avg_order_value": 320, "desktop_share": 0.6})
    >>> ben = Persona("Ben", "", {"avg_order_value": 25, "mobile_share": 0.9})
    >>> catalog = PersonaCatalog([ella, ben])
    >>> x = dict(Persona("x", "", {"avg_order_value": 300, "desktop_share": 0.7}).vector())
    >>> m = catalog.match(x)
    >>> m.name, m.confidence > 0.7, m.reasons[0]
    ('Ella', True, 'avg_order_value near 320 (persona) vs 300')
    """

    def __init__(self, personas: Sequence[Persona]) -> None:
        if not personas:
            raise ValueError("a persona catalog needs at least one persona")
        names = [p.name for p in personas]
        if len(set(names)) != len(names):
            raise ValueError("persona names must be unique")
        self.personas = tuple(personas)
        self._vectors = [p.vector() for p in personas]
        self._points = [tuple(v[f] for f in FEATURE_VECTOR) for v in self._vectors]
        self._index = {p.name: i for i, p in enumerate(personas)}
        n = len(personas)
        self._mean = {f: sum(v[f] for v in self._vectors) / n for f in FEATURE_VECTOR}
        # Per persona, per prototype field: how far it stands from the others (fixed), where it
        # sits in the vector and its readable value, so that a match only measures closeness.
        self._fields: list[list[tuple[float, str, str, float, str]]] = []
        for persona, proto in zip(self.personas, self._vectors, strict=True):
            fields = []
            for name, value in persona.prototype.items():
                target = PROTOTYPE_FIELDS[name][0]
                distinct = abs(proto[target] - self._mean[target])
                fields.append((distinct, name, target, proto[target], _fmt(value)))
            self._fields.append(fields)

    def match(
        self, x: Mapping[str, float], current: str | None = None, hysteresis: float = 0.0
    ) -> PersonaMatch:
        """The nearest persona; ``current`` is kept unless another is nearer by ``hysteresis``.

        Confidence is ``d_other / (d_self + d_other)`` against the nearest other persona: below
        0.5 when a kept ``current`` persona is no longer the nearest.
        """
        point = [x.get(f, 0.0) for f in FEATURE_VECTOR]
        distances = [math.dist(point, v) for v in self._points]
        order = sorted(range(len(distances)), key=distances.__getitem__)
        best = order[0]
        kept = self._index.get(current) if current is not None else None
        if (
            kept is not None
            and kept != best
            and distances[best] > distances[kept] * (1.0 - hysteresis)
        ):
            best = kept
        d1 = distances[best]
        others = [distances[i] for i in order if i != best]
        d2 = others[0] if others else math.inf
        confidence = 1.0 if d1 + d2 == 0 or math.isinf(d2) else d2 / (d1 + d2)
        return PersonaMatch(self.personas[best].name, round(confidence, 4), self._reasons(x, best))

    def _reasons(self, x: Mapping[str, float], index: int, top: int = 3) -> tuple[str, ...]:
        """Features where this persona stands out from the others and the customer is close."""
        scored = sorted(
            (
                (distinct * (1.0 - abs(x.get(target, 0.0) - at)), name, target, shown)
                for distinct, name, target, at, shown in self._fields[index]
            ),
            reverse=True,
        )
        return tuple(
            f"{name} near {shown} (persona) vs {_fmt(_unsquash(name, x.get(target, 0.0)))}"
            for _, name, target, shown in scored[:top]
        )


def _unsquash(name: str, value: float) -> float:
    scale = PROTOTYPE_FIELDS[name][1]
    return math.expm1(value * math.log1p(scale)) if scale else value


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2f}"
