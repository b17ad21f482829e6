"""Which of an agent's languages a text message is written in: common words counted, nothing learned.

A WhatsApp or e-mail contact writes in their own language; an agent that allows several (``Agent.languages``)
answers each message in the one it is written in.  The candidates are few (an agent's two or three languages)
and the messages short, so a model would be overkill: each catalog (voicebot/i18n/<lang>.json) lists its
``common_words`` (articles, pronouns, question words), and the candidate with the most hits wins; a tie or no hit
keeps the agent's main language.  Spanish punctuation and letters (¿ ¡ ñ and accented vowels) count too.
Attacker-controlled text: only the first ``MAX_CHARS`` characters are read, with one linear regex.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

from voicebot.i18n import base_language, catalog

MAX_CHARS = 2000
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_MARKS = {"es": re.compile(r"[¿¡ñáéíóú]")}
"""Characters that only (or mostly) one candidate language writes."""


@cache
def common_words(language: str) -> frozenset[str]:
    return frozenset(catalog(base_language(language)).get("common_words", "").split())


def detect_language(text: str, candidates: Sequence[str], default: str) -> str:
    """The candidate (or ``default``) ``text`` is most likely written in; ``default`` when unsure."""
    options = [default, *(c for c in candidates if c and c != default)]
    if len(options) == 1:
        return default
    sample = text[:MAX_CHARS].lower()
    words = _WORD.findall(sample)
    scores: dict[str, int] = {}
    for option in options:
        vocabulary = common_words(option)
        score = sum(1 for w in words if w in vocabulary)
        marks = _MARKS.get(base_language(option))
        if marks is not None:
            score += 2 * min(3, len(marks.findall(sample)))
        scores[option] = score
    best = max(options, key=lambda o: (scores[o], o == default))
    return best if scores[best] > scores[default] else default
