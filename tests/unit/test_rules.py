import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.rules import RuleError, RuleSegment, compile_condition, compile_rules, evaluate_all

FACTS = {
    "orders_total": 4,
    "country": "DE",
    "lifecycle": "active",
    "avg_order_value": 120.5,
    "traits.interests": ["fashion", "travel"],
    "traits.age": 45,
    "region": None,
}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"orders_total": 4}, True),  # shorthand for eq
        ({"orders_total": {"eq": 3}}, False),
        ({"orders_total": {"ne": 3}}, True),
        ({"orders_total": {"gt": 3}}, True),
        ({"orders_total": {"gte": 5}}, False),
        ({"orders_total": {"lt": 5}}, True),
        ({"orders_total": {"lte": 3}}, False),
        ({"orders_total": {"gte": 2, "lte": 4}}, True),  # several operators: and
        ({"avg_order_value": {"between": [100, 200]}}, True),
        ({"avg_order_value": {"between": [121, 200]}}, False),
        ({"country": {"in": ["DE", "AT"]}}, True),
        ({"country": {"not_in": ["DE", "AT"]}}, False),
        ({"traits.interests": {"contains": "fashion"}}, True),
        ({"traits.interests": {"contains": "golf"}}, False),
        ({"traits.age": {"exists": True}}, True),
        ({"region": {"exists": True}}, False),  # None counts as absent
        ({"traits.industry": {"exists": False}}, True),
        ({"all": [{"orders_total": {"gte": 3}}, {"country": "DE"}]}, True),
        ({"all": [{"orders_total": {"gte": 3}}, {"country": "FR"}]}, False),
        ({"any": [{"country": "FR"}, {"lifecycle": "active"}]}, True),
        ({"not": {"country": "DE"}}, False),
        ({"orders_total": 4, "country": "DE"}, True),  # two fields in one mapping: and
        ({"missing_fact": {"ne": 1}}, False),  # a missing fact matches nothing, not even ne
        ({"country": {"gt": 3}}, False),  # a string against a number: no match, no error
        ({"traits.interests": {"in": ["fashion"]}}, False),  # a list fact in `in`: no match
    ],
)
def test_each_operator_and_combinator(condition, expected):
    assert compile_condition("s", condition)(FACTS) is expected


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ({}, "non-empty mapping"),
        ({"all": []}, "non-empty list"),
        ({"orders_total": {"greater": 3}}, "unknown operator 'greater'"),
        ({"country": {"in": "DE"}}, "'in' needs a non-empty list"),
        ({"avg_order_value": {"between": [5]}}, "'between' needs [low, high]"),
        ({"avg_order_value": {"between": [9, 1]}}, "reversed"),
        ({"traits.age": {"exists": "yes"}}, "'exists' needs true or false"),
        ({"orders_total": {"gte": [1]}}, "'gte' needs a number or a string"),
        ({"not": {"any": [{"ordrs_total": 1}]}}, "when.not.any[0]: unknown field 'ordrs_total'"),
    ],
)
def test_bad_conditions_name_the_segment_the_line_and_the_problem(condition, problem):
    known = {"orders_total", "country", "avg_order_value", "traits.age"}.__contains__
    with pytest.raises(RuleError) as info:
        compile_condition("vip", condition, line=12, known=known)
    message = str(info.value)
    assert message.startswith("segment 'vip' (line 12): ") and problem in message


def test_a_customer_is_in_many_rule_segments_at_once():
    segments = [
        RuleSegment("buyer", "value", "", compile_condition("buyer", {"orders_total": {"gte": 1}})),
        RuleSegment(
            "dach", "geographic", "", compile_condition("dach", {"country": {"in": ["DE"]}})
        ),
        RuleSegment(
            "b2b",
            "firmographic",
            "",
            compile_condition("b2b", {"traits.industry": {"exists": True}}),
        ),
    ]
    assert evaluate_all(segments, FACTS) == ["buyer", "dach"]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
)
DEFAULT_RULES = None


def _default_rules():
    global DEFAULT_RULES
    if DEFAULT_RULES is None:
        from stream.catalog import load_segments

        DEFAULT_RULES = load_segments()
    return DEFAULT_RULES


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "orders_total",
                "country",
                "lifecycle",
                "value_tier",
                "customer_value_estimate",
                "cart_adds",
                "cart_abandonment",
                "sessions",
                "channel",
                "search_share",
                "avg_viewed_price",
                "top_category",
                "device_share.mobile",
                "device_share.desktop",
                "device_share.tablet",
                "region",
                "age_band",
                "traits.income_band",
                "traits.interests",
                "traits.industry",
                "traits.company_size",
            ]
        ),
        values,
    )
)
def test_rule_evaluation_never_raises_on_any_fact_values(facts):
    names = evaluate_all(_default_rules(), facts)
    assert isinstance(names, list)
    if facts.get("orders_total") == 1 and not isinstance(facts["orders_total"], bool):
        assert "one_time_buyer" in names


def test_nan_never_matches_a_comparison():
    p = compile_condition("s", {"x": {"gte": 0}})
    assert p({"x": math.nan}) is False and p({"x": math.inf}) is False


# -- the generated evaluator (compile_rules) against the compiled predicates ---------------------

_FIELDS = ("a", "b", "c")
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(["x", "y", ""]),
    st.lists(st.sampled_from(["x", "y"]), max_size=2),
)
_LEAVES = st.one_of(
    st.tuples(st.sampled_from(["lt", "lte", "gt", "gte"]), st.integers(-3, 3) | st.floats(-3, 3)),
    st.tuples(st.sampled_from(["lt", "gte"]), st.sampled_from(["x", "y"])),
    st.tuples(st.sampled_from(["eq", "ne"]), st.integers(-3, 3) | st.sampled_from(["x", "y"])),
    st.tuples(
        st.sampled_from(["in", "not_in"]),
        st.lists(st.integers(-3, 3) | st.sampled_from(["x", "y"]), min_size=1),
    ),
    st.tuples(st.just("between"), st.just([-1, 2])),
    st.tuples(st.just("contains"), st.sampled_from(["x", "y"])),
    st.tuples(st.just("exists"), st.booleans()),
)
_CONDITIONS = st.recursive(
    st.builds(lambda f, leaf: {f: {leaf[0]: leaf[1]}}, st.sampled_from(_FIELDS), _LEAVES),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_CONDITIONS, min_size=1, max_size=4),
    st.dictionaries(st.sampled_from(_FIELDS), _VALUES),
)
def test_the_generated_evaluator_agrees_with_each_rules_predicate(conditions, facts):
    segments = [RuleSegment.compile(f"r{i}", "custom", "", c) for i, c in enumerate(conditions)]
    expected = [s.name for s in segments if s.matches(facts)]
    assert compile_rules(segments)(facts) == expected == evaluate_all(segments, facts)


def test_the_generated_evaluator_agrees_on_the_built_in_rules_and_a_bare_predicate():
    rules = [*_default_rules(), RuleSegment("bare", "custom", "", lambda f: f["orders_total"] > 3)]
    evaluate = compile_rules(rules)
    for facts in (FACTS, {}, {**FACTS, "orders_total": "many"}, {"revenue_total": 1e9}):
        assert evaluate(facts) == evaluate_all(rules, facts)  # "bare" raises on {}: no match


def test_the_generated_evaluator_agrees_on_every_operator_at_its_edges():
    """Each operator against facts below, at and above its operand, and of other types."""
    operands = {
        "lt": [1, 1.5, "x"],
        "lte": [1, 1.5, "x"],
        "gt": [1, 1.5, "x"],
        "gte": [1, 1.5, "x"],
        "eq": [1, "x"],
        "ne": [1, "x"],
        "in": [[1, 2], ["x"]],
        "not_in": [[1, 2], ["x"]],
        "between": [[1, 2]],
        "contains": ["x"],
        "exists": [True, False],
    }
    facts = [0, 1, 1.5, 2, 3, 1.0, True, False, None, math.nan, math.inf, "x", "w", "y", ["x"], ()]
    segments = [
        RuleSegment.compile(f"{op}-{i}", "custom", "", {"a": {op: value}})
        for op, values in operands.items()
        for i, value in enumerate(values)
    ]
    evaluate = compile_rules(segments)
    for fact in facts:
        assert evaluate({"a": fact}) == evaluate_all(segments, {"a": fact}), fact
    assert evaluate({}) == evaluate_all(segments, {})
