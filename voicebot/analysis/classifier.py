"""Sentiment and category of one message, from the local LLM with its reply constrained to JSON.

The reply is sampled through a grammar made from :func:`reply_schema` (``GenerationOptions.json_schema``), so the
model can only write ``{"sentiment": <one of SENTIMENTS>, "category": <one of the admin's names or "other">}``.
Small models follow examples better than rules: the prompt shows a few conversations turns (a message, its JSON),
taken from :data:`EXAMPLES`.  An example whose category the admin has not defined is shown as ``other``, which is
what such a message then is.  Measured with Qwen2.5 0.5B on a 10-message set (English and Spanish): sentiment 9 of
10, category 7 of 10 (spam is the weak one), about a second per message on 2 cores; a larger Ollama model does
better with the same prompt.

The system block and the examples are the same for every message, so the embedded model evaluates them once and
then only each message's own tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voicebot.errors import AnalysisError
from voicebot.llm.base import ChatMessage, GenerationOptions, LanguageModel, TextDelta

SENTIMENTS = ("negative", "neutral", "positive")
OTHER = "other"
MAX_TEXT_CHARS = 1200
"""Of a long message, the start is analysed (what a mail or a note is about is said first)."""
MAX_REPLY_TOKENS = 40
TIMEOUT_SECONDS = 60.0

INSTRUCTIONS = (
    "You sort customers' messages. For each message, answer with JSON: its sentiment and its category.\n"
    "Sentiment: negative (angry, unhappy, disappointed), positive (happy, grateful, pleased), neutral (a plain "
    "question or request).")

EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("Do you sell gift cards? How much are they?", "neutral", "sales"),
    ("My printer shows error 42, how do I fix it?", "neutral", "support"),
    ("You charged me twice and nobody answers. Terrible service!", "negative", "complaint"),
    ("You have won 1000 dollars! Click here to claim your prize.", "neutral", "spam"),
    ("Are you open on Sunday? Thanks!", "neutral", OTHER),
)
"""A message, its sentiment, and the category it belongs to when the admin defined one by that name."""


@dataclass(frozen=True)
class CategorySpec:
    """An admin's category as the model sees it: a name and what belongs in it."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class Analysis:
    sentiment: str
    category: str | None
    """One of the categories given, ``other`` when none fits; None when no categories were given."""


def _names(categories: Sequence[CategorySpec]) -> list[str]:
    names = [c.name for c in categories if c.name != OTHER]
    return [*names, OTHER] if names else []


def reply_schema(categories: Sequence[CategorySpec]) -> dict[str, Any]:
    """The JSON schema of the reply (sentiment first: the model writes the fields in this order)."""
    properties: dict[str, Any] = {"sentiment": {"enum": list(SENTIMENTS)}}
    names = _names(categories)
    if names:
        properties["category"] = {"enum": names}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def _clean(text: str) -> str:
    return " ".join(text.split())[:MAX_TEXT_CHARS]


def prompt(text: str, categories: Sequence[CategorySpec]) -> list[ChatMessage]:
    """System block, example turns, then the message."""
    names = _names(categories)
    system = INSTRUCTIONS
    if names:
        lines = [f"- {c.name}: {_clean(c.description) or c.name}" for c in categories if c.name != OTHER]
        lines.append(f"- {OTHER}: none of the above")
        system += "\nCategories:\n" + "\n".join(lines)
    messages = [ChatMessage("system", system)]
    for example, sentiment, category in EXAMPLES:
        reply: dict[str, str] = {"sentiment": sentiment}
        if names:
            reply["category"] = category if category in names else OTHER
        messages += [ChatMessage("user", example), ChatMessage("assistant", json.dumps(reply))]
    messages.append(ChatMessage("user", _clean(text)))
    return messages


def parse(raw: str, categories: Sequence[CategorySpec]) -> Analysis:
    """Read the model's reply; AnalysisError when it is not the JSON asked for (a backend that ignored the
    schema)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AnalysisError(f"the analysis is not JSON: {raw[:80]!r}") from exc
    if not isinstance(value, Mapping):
        raise AnalysisError("the analysis is not a JSON object")
    sentiment = str(value.get("sentiment", "")).strip().lower()
    if sentiment not in SENTIMENTS:
        raise AnalysisError(f"unknown sentiment {sentiment[:20]!r}")
    names = _names(categories)
    if not names:
        return Analysis(sentiment, None)
    category = str(value.get("category", "")).strip().lower()
    return Analysis(sentiment, category if category in names else OTHER)


class Analyzer:
    """Asks a language model for a message's :class:`Analysis`."""

    def __init__(self, llm: LanguageModel, *, timeout: float = TIMEOUT_SECONDS) -> None:
        self.llm = llm
        self.timeout = timeout

    async def analyze(self, text: str, categories: Sequence[CategorySpec]) -> Analysis:
        """Raises AnalysisError (unreadable reply) or another LlmError (the model failed or took too long)."""
        options = GenerationOptions(temperature=0.0, max_tokens=MAX_REPLY_TOKENS,
                                    json_schema=reply_schema(categories))
        pieces: list[str] = []
        try:
            async with asyncio.timeout(self.timeout):
                async with contextlib.aclosing(self.llm.stream(prompt(text, categories), options=options)) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            pieces.append(event.text)
        except TimeoutError as exc:
            raise AnalysisError(f"the analysis took longer than {self.timeout:g}s", code="analysis_timeout") from exc
        return parse("".join(pieces), categories)
