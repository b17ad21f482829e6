"""The analysis prompt, schema and reply reading (no model): what the model is shown and what is accepted back."""

from __future__ import annotations

import json

import pytest

from voicebot.analysis.classifier import EXAMPLES, OTHER, SENTIMENTS, CategorySpec, parse, prompt, reply_schema
from voicebot.errors import AnalysisError

SALES_SUPPORT = [CategorySpec("sales", "wants to buy"), CategorySpec("support", "needs help")]


def test_schema_without_categories_asks_only_sentiment() -> None:
    schema = reply_schema([])
    assert schema["properties"] == {"sentiment": {"enum": list(SENTIMENTS)}}
    assert schema["required"] == ["sentiment"] and schema["additionalProperties"] is False


def test_schema_offers_the_admins_categories_then_other_in_order() -> None:
    schema = reply_schema([*SALES_SUPPORT, CategorySpec(OTHER, "ignored: always last")])
    assert list(schema["properties"]) == ["sentiment", "category"]  # sentiment written first
    assert schema["properties"]["category"]["enum"] == ["sales", "support", OTHER]


def test_examples_of_undefined_categories_are_shown_as_other() -> None:
    messages = prompt("How much is it?", SALES_SUPPORT)
    assert messages[0].role == "system" and "- sales: wants to buy" in messages[0].content
    replies = [json.loads(m.content) for m in messages if m.role == "assistant"]
    assert len(replies) == len(EXAMPLES)
    shown = {m.content: json.loads(r.content)["category"] for m, r in zip(messages[1::2], messages[2::2], strict=False)}
    assert shown["My printer shows error 42, how do I fix it?"] == "support"
    assert shown["You have won 1000 dollars! Click here to claim your prize."] == OTHER  # no spam category here
    assert messages[-1].role == "user" and messages[-1].content == "How much is it?"


def test_message_text_is_flattened_and_bounded() -> None:
    text = "line one\n\n\tline two " + "x" * 5000
    last = prompt(text, [])[-1].content
    assert last.startswith("line one line two ") and len(last) == 1200


def test_without_categories_examples_carry_only_sentiment() -> None:
    replies = [json.loads(m.content) for m in prompt("hi", []) if m.role == "assistant"]
    assert all(set(r) == {"sentiment"} for r in replies)


def test_parse_reads_the_reply_and_maps_unknown_categories_to_other() -> None:
    assert parse('{"sentiment": "negative", "category": "sales"}', SALES_SUPPORT).category == "sales"
    assert parse('{"sentiment": "Positive", "category": "billing"}', SALES_SUPPORT).category == OTHER
    assert parse('{"sentiment": "neutral"}', []).category is None


@pytest.mark.parametrize("raw", ["", "not json", "[1, 2]", '{"sentiment": "furious"}', '{"category": "sales"}'])
def test_parse_refuses_what_is_not_the_reply_asked_for(raw: str) -> None:
    with pytest.raises(AnalysisError):
        parse(raw, SALES_SUPPORT)
