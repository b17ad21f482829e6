"""Audience segments without a database: each operator on examples (trimmed, case-insensitive text; numbers that
are not numbers matching no numeric operator; a missing variable), the refusals of a bad segment (unknown
operator, ``in`` without values, too many conditions, a numeric operator without a number), and properties over
generated variables: ``ne``/``not_in``/``missing`` are the exact negations of ``eq``/``in``/``exists``, conditions
are ANDed, padding and ASCII case never change an answer, and numeric operators agree with Python's comparison."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from voicebot.campaigns.rules import CampaignRules
from voicebot.campaigns.segments import MAX_CONDITIONS, Condition, Segment, matches, number, subject

SEGMENT: TypeAdapter[list[Condition]] = TypeAdapter(Segment)


def seg(*conditions: dict[str, Any]) -> list[Condition]:
    return SEGMENT.validate_python(list(conditions))


ROW = {"plan": " Gold ", "city": "São Paulo", "age": "42", "score": "2.5e1", "note": "", "junk": "n/a"}


@pytest.mark.parametrize(("condition", "expected"), [
    ({"variable": "plan", "op": "eq", "value": "gold"}, True),
    ({"variable": "plan", "op": "eq", "value": "GOLD  "}, True),
    ({"variable": "plan", "op": "eq", "value": "silver"}, False),
    ({"variable": "plan", "op": "ne", "value": "silver"}, True),
    ({"variable": "absent", "op": "ne", "value": "silver"}, True),  # no variable: not equal to anything
    ({"variable": "absent", "op": "eq", "value": "silver"}, False),
    ({"variable": "plan", "op": "in", "values": ["silver", "gold"]}, True),
    ({"variable": "plan", "op": "not_in", "values": ["silver", "gold"]}, False),
    ({"variable": "absent", "op": "not_in", "values": ["gold"]}, True),
    ({"variable": "city", "op": "contains", "value": "SÃO"}, True),
    ({"variable": "city", "op": "contains", "value": "paulo"}, True),
    ({"variable": "city", "op": "eq", "value": "sa\u0303o paulo"}, True),  # a decomposed accent (NFKC)
    ({"variable": "note", "op": "exists"}, False),  # a blank cell is missing
    ({"variable": "note", "op": "missing"}, True),
    ({"variable": "absent", "op": "missing"}, True),
    ({"variable": "plan", "op": "exists"}, True),
    ({"variable": "age", "op": "gt", "value": 40}, True),
    ({"variable": "age", "op": "ge", "value": "42"}, True),
    ({"variable": "age", "op": "lt", "value": 42}, False),
    ({"variable": "age", "op": "le", "value": 42.0}, True),
    ({"variable": "score", "op": "eq", "value": "2.5e1"}, True),
    ({"variable": "score", "op": "gt", "value": 24.9}, True),
    ({"variable": "junk", "op": "gt", "value": 0}, False),  # not a number: no numeric operator matches
    ({"variable": "junk", "op": "le", "value": 0}, False),
    ({"variable": "note", "op": "lt", "value": 1}, False),
    ({"variable": "absent", "op": "ge", "value": -1e9}, False),
    ({"variable": "age", "op": "eq", "value": 42}, True),  # a number given to a text operator: as written
])
def test_each_operator(condition: dict[str, Any], expected: bool) -> None:
    assert matches(seg(condition), ROW) is expected


def test_the_special_variables_and_and() -> None:
    variables = subject({"plan": "gold"}, name="Ana López", phone="+34600000001", timezone=None)
    assert variables == {"plan": "gold", "name": "Ana López", "phone": "+34600000001", "timezone": ""}
    both = seg({"variable": "plan", "op": "eq", "value": "gold"}, {"variable": "phone", "op": "contains",
                                                                  "value": "+34"})
    assert matches(both, variables)
    assert not matches([*both, *seg({"variable": "timezone", "op": "exists"})], variables)
    assert matches([], {})  # no segment: everyone


def test_numbers_are_read_strictly() -> None:
    assert [number(t) for t in ("42", " -3 ", "+2.", ".5", "1e3", "1E-2")] == [42, -3, 2, 0.5, 1000, 0.01]
    junk = ("", "n/a", "1,5", "1_000", "nan", "inf", "-inf", "1e999", "0x10", "١٢")
    assert [number(t) for t in junk] == [None] * len(junk)


@pytest.mark.parametrize(("condition", "problem"), [
    ({"variable": "plan", "op": "like", "value": "g%"}, "Input should be"),
    ({"variable": "plan", "op": "in"}, "in needs values"),
    ({"variable": "plan", "op": "in", "values": []}, "in needs values"),
    ({"variable": "plan", "op": "not_in", "value": "gold"}, "not_in needs values"),
    ({"variable": "plan", "op": "in", "values": ["gold", "  "]}, "a value is blank"),
    ({"variable": "plan", "op": "eq"}, "eq needs a value"),
    ({"variable": "plan", "op": "eq", "value": "   "}, "eq needs a value"),
    ({"variable": "plan", "op": "eq", "values": ["a"]}, "takes one value"),
    ({"variable": "plan", "op": "exists", "value": "x"}, "takes no value"),
    ({"variable": "age", "op": "gt", "value": "ten"}, "gt needs a number"),
    ({"variable": "age", "op": "gt"}, "gt needs a number"),
    ({"variable": "age", "op": "gt", "value": True}, "not true/false"),
    ({"variable": "Plan!", "op": "exists"}, "String should match pattern"),
    ({"variable": "plan", "op": "exists", "other": 1}, "Extra inputs"),
])
def test_bad_conditions_are_refused_naming_the_problem(condition: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CampaignRules.model_validate({"segment": [condition]})
    assert problem in str(caught.value)
    assert caught.value.errors()[0]["loc"][:2] == ("segment", 0)


def test_too_many_conditions_are_refused() -> None:
    many = [{"variable": f"v{i}", "op": "exists"} for i in range(MAX_CONDITIONS + 1)]
    with pytest.raises(ValidationError, match="at most 10"):
        CampaignRules.model_validate({"segment": many})
    assert len(CampaignRules.model_validate({"segment": many[:-1]}).segment) == MAX_CONDITIONS


def test_stored_rules_read_back_the_same() -> None:
    rules = CampaignRules.model_validate({"segment": [{"variable": "age", "op": "ge", "value": "18"},
                                                      {"variable": "plan", "op": "in", "values": ["Gold"]}]})
    stored = rules.model_dump(mode="json")
    assert stored["segment"][0]["value"] == 18.0
    assert CampaignRules.model_validate(stored) == rules


# ------------------------------ properties --------------------------------------------------------
NAMES = st.sampled_from(["plan", "age", "city", "absent"])
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
ASCII = st.text(alphabet="abcXYZ019 .-", max_size=8)
VALUE = st.one_of(TEXT, ASCII, st.integers(-1000, 1000).map(str),
                  st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr))
VARIABLES = st.dictionaries(st.sampled_from(["plan", "age", "city"]), VALUE, max_size=3)
WORD = st.text(alphabet="abcXYZ019", min_size=1, max_size=6)
NUMBER = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
CONDITION = st.one_of(
    st.builds(lambda v, op, w: {"variable": v, "op": op, "value": w}, NAMES,
              st.sampled_from(["eq", "ne", "contains"]), WORD),
    st.builds(lambda v, op, ws: {"variable": v, "op": op, "values": ws}, NAMES, st.sampled_from(["in", "not_in"]),
              st.lists(WORD, min_size=1, max_size=4)),
    st.builds(lambda v, op: {"variable": v, "op": op}, NAMES, st.sampled_from(["exists", "missing"])),
    st.builds(lambda v, op, n: {"variable": v, "op": op, "value": n}, NAMES, st.sampled_from(["gt", "ge", "lt", "le"]),
              NUMBER),
)
OPPOSITE = {"eq": "ne", "ne": "eq", "in": "not_in", "not_in": "in", "exists": "missing", "missing": "exists"}


@settings(max_examples=300, deadline=None)
@given(st.lists(CONDITION, max_size=MAX_CONDITIONS), VARIABLES)
def test_conditions_are_anded_and_opposites_negate(conditions: list[dict[str, Any]],
                                                   variables: dict[str, str]) -> None:
    segment = seg(*conditions)
    assert matches(segment, variables) == all(matches([c], variables) for c in segment)
    for condition in conditions:
        if condition["op"] in OPPOSITE:
            flipped = {**condition, "op": OPPOSITE[condition["op"]]}
            assert matches(seg(flipped), variables) is not matches(seg(condition), variables)


@settings(max_examples=300, deadline=None)
@given(CONDITION, st.sampled_from(["plan", "age", "city"]), ASCII, st.text(alphabet=" \t", max_size=3),
       st.text(alphabet=" \t", max_size=3))
def test_padding_and_ascii_case_never_change_an_answer(condition: dict[str, Any], key: str, value: str,
                                                       left: str, right: str) -> None:
    segment = seg(condition)
    plain = matches(segment, {key: value})
    assert matches(segment, {key: left + value.upper() + right}) is plain
    assert matches(segment, {key: left + value.lower() + right}) is plain


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["gt", "ge", "lt", "le"]), NUMBER, st.one_of(NUMBER.map(repr), st.integers().map(str), TEXT))
def test_numeric_operators_agree_with_python(op: str, limit: float, value: str) -> None:
    got = matches(seg({"variable": "x", "op": op, "value": limit}), {"x": value})
    read = number(value)
    if read is None:
        assert got is False
        return
    assert math.isfinite(read)
    assert got is {"gt": read > limit, "ge": read >= limit, "lt": read < limit, "le": read <= limit}[op]


@settings(max_examples=200, deadline=None)
@given(WORD, VARIABLES)
def test_in_with_one_value_is_eq(word: str, variables: dict[str, str]) -> None:
    assert matches(seg({"variable": "plan", "op": "in", "values": [word]}), variables) is matches(
        seg({"variable": "plan", "op": "eq", "value": word}), variables)
