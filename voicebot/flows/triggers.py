"""Which flow an agent's conversation should enter for a caller's words (pure; shared by every channel).

An agent names flows it can run (``Agent.flow_triggers``: flow name -> phrases).  A message containing one of
the phrases as whole words starts that flow ("I'd like to book an appointment" -> ``booking``); the longest
phrase wins, so "cancel my booking" can belong to another flow than "booking".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from voicebot.flows.values import words


def trigger_for(triggers: Mapping[str, Sequence[str]], text: str) -> str | None:
    said = f" {' '.join(words(text))} "
    best: tuple[int, str] | None = None
    for flow, phrases in triggers.items():
        for phrase in phrases:
            norm = " ".join(words(phrase))
            if norm and f" {norm} " in said and (best is None or len(norm) > best[0]):
                best = (len(norm), flow)
    return best[1] if best else None
