"""Declarative rule segments: a small grammar over facts, compiled once, evaluated per event.

A condition is one of

- ``{"all": [cond, ...]}`` (and), ``{"any": [cond, ...]}`` (or), ``{"not": cond}``;
- ``{FIELD: {OP: VALUE, ...}}``, several operators on one field meaning *and*; or the
  shorthand ``{FIELD: VALUE}`` for ``eq``. Several fields in one mapping also mean *and*.

``FIELD`` names a fact (``orders_total``, ``lifecycle``, ``traits.age``, ``device_share.mobile``).
Operators: ``eq``, ``ne``, ``lt``, ``lte``, ``gt``, ``gte``, ``in``, ``not_in``, ``between``
(``[low, high]``, inclusive), ``contains`` (a list fact holds the value), ``exists`` (bool).
Evaluation never raises: a missing fact, or one of the wrong type, makes the comparison false
(and ``ne`` / ``not_in`` true only when the fact exists).

:meth:`RuleSegment.compile` also keeps, from compile time, every field a rule names and every
number it compares a field with (``RuleSegment.thresholds``, :class:`Threshold`): for facts
that move with event time alone, the step turns those into the event times at which the rule
can next change (``models.facts.TimeWatch``). Evaluation itself is untouched by that.
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from models.frozen import Frozen

__all__ = [
    "OPERATORS",
    "RuleError",
    "RuleSegment",
    "Threshold",
    "compile_condition",
    "compile_rules",
    "evaluate_all",
]

Facts = Mapping[str, Any]
Predicate = Callable[[Facts], bool]
_MISSING = object()


class RuleError(ValueError):
    """A segment definition that cannot be compiled; the message names segment, line and problem."""

    def __init__(self, segment: str, problem: str, line: int | None = None) -> None:
        where = f" (line {line})" if line is not None else ""
        super().__init__(f"segment {segment!r}{where}: {problem}")
        self.segment, self.problem, self.line = segment, problem, line


def _number(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return True
    if kind is float:
        return bool(value - value == 0.0)  # finite: inf - inf and nan - nan are nan
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _comparable(a: Any, b: Any) -> bool:
    return (_number(a) and _number(b)) or (isinstance(a, str) and isinstance(b, str))


def _ordered(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def op(fact: Any, value: Any) -> bool:
        return _comparable(fact, value) and test(fact, value)

    return op


def _between(fact: Any, bounds: Any) -> bool:
    low, high = bounds
    return _comparable(fact, low) and _comparable(fact, high) and bool(low <= fact <= high)


def _contains(fact: Any, value: Any) -> bool:
    return isinstance(fact, list | tuple | set | frozenset) and value in fact


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda f, v: bool(f == v),
    "ne": lambda f, v: bool(f != v),
    "lt": _ordered(lambda f, v: f < v),
    "lte": _ordered(lambda f, v: f <= v),
    "gt": _ordered(lambda f, v: f > v),
    "gte": _ordered(lambda f, v: f >= v),
    "in": lambda f, v: f in v,
    "not_in": lambda f, v: f not in v,
    "between": _between,
    "contains": _contains,
}


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def _check_value(op: str, value: Any) -> str | None:
    """Why ``value`` is not a valid operand of ``op``, or None."""
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            return f"'{op}' needs a non-empty list, got {value!r}"
        if any(isinstance(v, dict | list) for v in value):
            return f"'{op}' needs a list of plain values"
    elif op == "between":
        if not (isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value)):
            return f"'between' needs [low, high] numbers, got {value!r}"
        if value[0] > value[1]:
            return f"'between' bounds are reversed: {value!r}"
    elif op == "exists":
        if not isinstance(value, bool):
            return f"'exists' needs true or false, got {value!r}"
    elif op in ("lt", "lte", "gt", "gte"):
        if not (_number(value) or isinstance(value, str)):
            return f"'{op}' needs a number or a string, got {value!r}"
    elif isinstance(value, dict | list) and op != "contains":
        return f"'{op}' needs a plain value, got {value!r}"
    return None


class _Source:
    """A condition as Python source: its expression over ``facts`` and the constants it names.

    Comparisons of a fact with a number, the most common leaf, are written out inline (the
    same tests as the compiled leaf: a fact that is None or not a finite number is no match);
    any other leaf calls its compiled predicate.
    """

    def __init__(self) -> None:
        self.expr = "False"
        self.env: dict[str, Any] = {}

    def _const(self, value: Any) -> str:
        name = f"_c{next(_CONSTANTS)}"  # unique across every rule compiled
        self.env[name] = value
        return name

    def leaf(self, name: str, op: str, value: Any, compiled: Predicate) -> str:
        symbol = _SYMBOLS.get(op)
        if op in ("eq", "in") and value is not None:
            # A plain fact (str, int, bool: ``==`` and set membership never raise on them)
            # is tested inline; any other calls the compiled leaf. The same results.
            key, call = self._const(name), self._const(compiled)
            test = (
                f"_f in {self._const(frozenset(value))}"
                if op == "in"
                else (f"_f == {self._const(value)}")
            )
            return (
                f"((_f := _get({key})) is not None and "
                f"({test} if type(_f) in _plain else {call}(facts)))"
            )
        if symbol is None or not _number(value):
            return f"{self._const(compiled)}(facts)"
        key, number = self._const(name), self._const(value)
        # _f: the fact; _t: its type. Exactly ``_number(fact) and fact <op> value``.
        return (
            f"((_f := _get({key})) is not None and ((_t := type(_f)) is int or "
            f"(_t is float and _f - _f == 0.0) or (_t is not float and _number(_f))) "
            f"and _f {symbol} {number})"
        )


_CONSTANTS = itertools.count()
#: Fact types a rule's ``eq`` and ``in`` test inline (``_Source.leaf``).
_PLAIN = frozenset({str, int, bool})
_SYMBOLS = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def compile_rules(segments: Sequence[RuleSegment]) -> Callable[[Facts], list[str]]:
    """``evaluate_all`` for these segments as one generated function: a rule's condition is
    one expression, every rule in one body (no call per rule or comparison). Same results as
    ``evaluate_all``: a rule that raises is no match.

    >>> vip = RuleSegment.compile("vip", "value", "", {"revenue_total": {"gte": 500}})
    >>> de = RuleSegment.compile("de", "geographic", "", {"country": {"in": ["DE"]}})
    >>> evaluate = compile_rules([vip, de])
    >>> evaluate({"revenue_total": 600.0, "country": "DE"}), evaluate({"revenue_total": "x"})
    (['vip', 'de'], [])
    """
    env: dict[str, Any] = {"_number": _number, "_plain": _PLAIN}
    lines = ["def evaluate(facts):", "    _get = facts.get", "    out = []"]
    for i, segment in enumerate(segments):
        source = segment.source
        if source is None:
            expr = f"_p{i}(facts)"
            env[f"_p{i}"] = segment.predicate
        else:
            expr = source.expr
            env.update(source.env)
        env[f"_n{i}"] = segment.name
        lines += [
            "    try:",
            f"        if {expr}:",
            f"            out.append(_n{i})",
            "    except Exception:",
            "        pass",
        ]
    lines.append("    return out")
    exec(compile("\n".join(lines), "<rules>", "exec"), env)  # noqa: S102 - our own source
    return cast(Callable[[Facts], list[str]], env["evaluate"])


def compile_condition(
    segment: str,
    condition: Any,
    line: int | None = None,
    known: Callable[[str], bool] | None = None,
    comparisons: list[tuple[str, str, Any]] | None = None,
    source: _Source | None = None,
) -> Predicate:
    """Compile a condition tree into a predicate over facts, or raise :class:`RuleError`.

    ``known`` tells whether a field name exists; unknown names are errors (typos, mostly).
    ``comparisons``, if given, receives every ``(field, operator, operand)`` of the tree, in
    order (inside ``all``, ``any`` and ``not`` alike). ``source``, if given, receives the
    same condition as one Python expression over ``facts`` (:func:`compile_rules`).

    >>> p = compile_condition("big", {"all": [{"orders_total": {"gte": 3}},
    ...                                       {"country": {"in": ["DE", "AT"]}}]})
    >>> p({"orders_total": 4, "country": "DE"}), p({"orders_total": 4}), p({})
    (True, False, False)
    """

    def fail(problem: str) -> RuleError:
        return RuleError(segment, problem, line)

    code = source if source is not None else _Source()

    def build(node: Any, path: str) -> tuple[Predicate, str]:
        if not isinstance(node, dict) or not node:
            raise fail(f"{path}: a condition must be a non-empty mapping, got {node!r}")
        parts: list[tuple[Predicate, str]] = []
        for key, value in node.items():
            if key in ("all", "any"):
                if not isinstance(value, list) or not value:
                    raise fail(f"{path}.{key}: needs a non-empty list of conditions")
                children = [build(child, f"{path}.{key}[{i}]") for i, child in enumerate(value)]
                join = " and " if key == "all" else " or "
                parts.append(
                    (
                        (_all if key == "all" else _any)([p for p, _ in children]),
                        "(" + join.join(e for _, e in children) + ")",
                    )
                )
            elif key == "not":
                child, expr = build(value, f"{path}.not")
                parts.append((_not(child), f"(not {expr})"))
            elif not isinstance(key, str) or not key:
                raise fail(f"{path}: field names must be strings, got {key!r}")
            else:
                if known is not None and not known(key):
                    raise fail(f"{path}: unknown field {key!r}")
                parts.append(_field(key, value, f"{path}.{key}"))
        if len(parts) == 1:
            return parts[0]
        return _all([p for p, _ in parts]), "(" + " and ".join(e for _, e in parts) + ")"

    def _field(name: str, spec: Any, path: str) -> tuple[Predicate, str]:
        if not isinstance(spec, dict):
            spec = {"eq": spec}
        if not spec:
            raise fail(f"{path}: no operator")
        tests: list[tuple[Predicate, str]] = []
        for op, value in spec.items():
            if op != "exists" and op not in OPERATORS:
                raise fail(
                    f"{path}: unknown operator {op!r} (use {', '.join([*OPERATORS, 'exists'])})"
                )
            problem = _check_value(op, value)
            if problem:
                raise fail(f"{path}: {problem}")
            if comparisons is not None:
                comparisons.append((name, op, value))
            leaf = _leaf(name, op, value)
            tests.append((leaf, code.leaf(name, op, value, leaf)))
        if len(tests) == 1:
            return tests[0]
        return _all([p for p, _ in tests]), "(" + " and ".join(e for _, e in tests) + ")"

    predicate, code.expr = build(condition, "when")
    return predicate


def _leaf(name: str, op: str, value: Any) -> Predicate:
    if op == "exists":
        return lambda facts: (facts.get(name, _MISSING) not in (_MISSING, None)) == value
    test = OPERATORS[op]
    frozen = frozenset(value) if op in ("in", "not_in") else value
    compare = _COMPARE.get(op)
    if compare is not None and _number(value):
        # A number to compare with, known now: only the fact's side is checked per event.
        def numeric(facts: Facts) -> bool:
            fact = facts.get(name)
            return fact is not None and _number(fact) and compare(fact, value)

        return numeric

    def predicate(facts: Facts) -> bool:
        fact = facts.get(name, _MISSING)
        if fact is _MISSING or fact is None:
            return False
        try:
            return test(fact, frozen)
        except TypeError:  # an unhashable fact in `in`, say: not a match, never an error
            return False

    return predicate


def _all(children: Sequence[Predicate]) -> Predicate:
    parts = tuple(children)

    def every(facts: Facts) -> bool:
        for child in parts:  # noqa: SIM110 - a loop, not a generator per call: per event
            if not child(facts):
                return False
        return True

    return every


def _any(children: Sequence[Predicate]) -> Predicate:
    parts = tuple(children)

    def some(facts: Facts) -> bool:
        for child in parts:  # noqa: SIM110 - a loop, not a generator per call: per event
            if child(facts):
                return True
        return False

    return some


def _not(child: Predicate) -> Predicate:
    return lambda facts: not child(facts)


class Threshold(NamedTuple):
    """A place where a rule's truth can change as one fact moves: where ``fact >= value``
    (``inclusive``) or ``fact > value`` turns.

    ``gt`` and ``lte`` turn at ``>``, ``gte`` and ``lt`` at ``>=``; ``eq``, ``ne``, ``in`` and
    ``not_in`` at both; ``between [low, high]`` at ``>= low`` and ``> high``.
    """

    fact: str
    value: float
    inclusive: bool


_EDGES: dict[str, tuple[bool, ...]] = {
    "gt": (False,),
    "lte": (False,),
    "gte": (True,),
    "lt": (True,),
    "eq": (True, False),
    "ne": (True, False),
}


def _thresholds(comparisons: Sequence[tuple[str, str, Any]]) -> tuple[Threshold, ...]:
    """Every numeric threshold of a condition's comparisons, each once, in order."""
    out: dict[Threshold, None] = {}
    for name, op, value in comparisons:
        if op == "between":
            edges = [(value[0], True), (value[1], False)]
        elif op in ("in", "not_in"):
            edges = [(v, inclusive) for v in value for inclusive in (True, False)]
        else:
            edges = [(value, inclusive) for inclusive in _EDGES.get(op, ())]
        for number, inclusive in edges:
            if _number(number):
                out[Threshold(name, float(number), inclusive)] = None
    return tuple(out)


@dataclass(frozen=True)
class RuleSegment(Frozen):
    """One named rule segment: a kind (value, behavioral, lifecycle, ...) and a predicate.

    ``fields`` are the facts the rule names and ``thresholds`` every :class:`Threshold` of
    its numeric comparisons (``lt lte gt gte eq ne`` operands, ``between`` bounds, numbers of
    ``in`` / ``not_in``), inside ``all`` / ``any`` / ``not`` alike: the rule's truth can
    change only where one of them turns. :meth:`compile` fills both; a segment built from a
    bare predicate has neither, and so no time-driven due times of its own.

    >>> quiet = RuleSegment.compile("quiet", "lifecycle", "",
    ...     {"any": [{"days_since_last_purchase": {"gt": 90}},
    ...              {"not": {"days_since_last_seen": {"between": [7, 30]}}}]})
    >>> [tuple(t) for t in quiet.thresholds]
    [('days_since_last_purchase', 90.0, False), ('days_since_last_seen', 7.0, True), \
('days_since_last_seen', 30.0, False)]
    >>> quiet.matches({"days_since_last_purchase": 91, "days_since_last_seen": 10})
    True
    """

    name: str
    kind: str
    description: str
    predicate: Predicate
    thresholds: tuple[Threshold, ...] = ()
    fields: frozenset[str] = frozenset()
    source: _Source | None = field(default=None, repr=False, compare=False)
    #: The condition as written (None: a bare predicate), to tell an edited rule from the same.
    condition: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def compile(
        cls,
        name: str,
        kind: str,
        description: str,
        condition: Any,
        line: int | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> RuleSegment:
        """Compile ``condition`` (see :func:`compile_condition`) into a segment that also
        knows its fields and thresholds; raises :class:`RuleError`."""
        comparisons: list[tuple[str, str, Any]] = []
        source = _Source()
        predicate = compile_condition(name, condition, line, known, comparisons, source)
        return cls(
            name,
            kind,
            description,
            predicate,
            _thresholds(comparisons),
            frozenset(fact for fact, _, _ in comparisons),
            source,
            copy.deepcopy(condition),
        )

    def same_as(self, other: RuleSegment) -> bool:
        """Whether ``other`` is this rule unedited: same name, kind and condition (a rule of
        a bare predicate is never known to be the same).

        >>> a = RuleSegment.compile("vip", "value", "", {"value_tier": {"in": ["gold"]}})
        >>> b = RuleSegment.compile("vip", "value", "new words", {"value_tier": {"in": ["gold"]}})
        >>> c = RuleSegment.compile("vip", "value", "", {"value_tier": {"in": ["platinum"]}})
        >>> a.same_as(b), a.same_as(c)
        (True, False)
        """
        return (
            self.condition is not None
            and self.name == other.name
            and self.kind == other.kind
            and self.condition == other.condition
        )

    def matches(self, facts: Facts) -> bool:
        try:
            return self.predicate(facts)
        except Exception:  # noqa: BLE001 - a rule must never stop the stream; no match instead
            return False


def evaluate_all(segments: Sequence[RuleSegment], facts: Facts) -> list[str]:
    """The names of every segment whose rule holds, in catalog order (many at once is normal)."""
    return [s.name for s in segments if s.matches(facts)]
