"""Contact variables on a call: what Eva knows about the person a campaign called (the contact's name and the
import's extra columns, ``CampaignEntry.variables``), bounded for the call, and texts filled with them.

The campaign dialer builds them with :func:`call_variables` when it places the call and registers them for the
channel (``VoiceApp.call_variables``); the voice app puts them in the call's
:attr:`~voicebot.pipeline.responder.CallContext.variables` (plain names: ``name``, ``appointment_day``).  From there:

* greetings and flows read them as ``{contact_<name>}`` (:func:`placeholders`), the flows' own ``{var}`` syntax
  with the prefix :data:`~voicebot.flows.spec.CONTACT_PREFIX`: ``"Hello {contact_name}"``.  The prefix keeps a
  column from ever being taken for a flow's own variable or Eva's (``caller``, ``did``, ``channel``), and lets the
  flow check accept texts and branches that use them although no step collects them;
* the agent's greeting is filled by :func:`personalize` when the call is set up;
* a call's flow starts with them set (:func:`voicebot.flows.resume.start_call_flow`): what a step collects or an
  action sets under the same name replaces the contact's value from then on (the engine's variables are one
  map, the last write wins);
* the LLM reads them, plain names, as a short note after the agent's cached prompt prefix
  (:func:`voicebot.agent.core.contact_note`).

The values come from an uploaded CSV, so they are data, never templates: a placeholder is replaced by plain text
in one pass (a value that holds ``{x}``, ``{{x}}`` or ``{0.__class__}`` is said as it is and never expanded; no
attribute or index lookups exist, unlike ``str.format``), and a placeholder the call has no value for becomes
empty.  They are bounded: at most :data:`MAX_VARIABLES`, each value on one line and cut to
:data:`MAX_VALUE_CHARS`, names that make a valid ``{contact_<name>}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from voicebot.flows.spec import CONTACT_PREFIX, fill
from voicebot.llm.base import defuse

MAX_VARIABLES = 20
"""Contact variables one call carries (the name first, then the import's columns in their order)."""
MAX_VALUE_CHARS = 200
"""Characters of one value a call keeps (the import allows 1000; a greeting or a prompt needs far fewer)."""
_NAME = re.compile(rf"^[A-Za-z0-9_]{{1,{64 - len(CONTACT_PREFIX)}}}$")
"""A name that makes a flow variable (``VarName``: 64 characters at most) once prefixed."""
_CONTACT_FIELD = re.compile(rf"\{{{CONTACT_PREFIX}[A-Za-z0-9_]{{1,{64 - len(CONTACT_PREFIX)}}}\}}")
"""A ``{contact_<name>}`` placeholder (the part of :func:`voicebot.flows.spec.fill`'s syntax a greeting fills)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE_BEFORE_MARK = re.compile(r"\s+([,.!?;:])")


def clean_value(value: object) -> str:
    """One value as a call uses it: text on one line (a newline in a CSV cell must not start a new line of the
    LLM's transcript), with chat-template markers defused (:func:`voicebot.llm.base.defuse`; every backend defuses
    what it renders again), cut to :data:`MAX_VALUE_CHARS`."""
    text = defuse(_CONTROL.sub(" ", str(value)))
    return " ".join(text.split())[:MAX_VALUE_CHARS]


def call_variables(name: str, variables: Mapping[str, object]) -> dict[str, str]:
    """The variables of a campaign call to a contact called ``name`` whose entry holds ``variables``.

    As the campaign's WhatsApp and e-mail templates see them: ``name`` is the contact's name, and a column that
    is itself called ``name`` wins.  Names that cannot follow the prefix are left out; at most MAX_VARIABLES
    remain.  Pure."""
    merged: dict[str, object] = {"name": name, **variables} if name else dict(variables)
    out: dict[str, str] = {}
    for key, value in merged.items():
        if len(out) == MAX_VARIABLES:
            break
        if isinstance(key, str) and _NAME.match(key):
            out[key] = clean_value(value)
    return out


def placeholders(variables: Mapping[str, str]) -> dict[str, str]:
    """The call's variables under the names texts and flows use: ``name`` → ``contact_name``."""
    return {f"{CONTACT_PREFIX}{key}": value for key, value in variables.items()}


def personalize(text: str, variables: Mapping[str, str]) -> str:
    """``text`` (an agent's greeting) with ``{contact_<name>}`` replaced by the call's values, a placeholder
    without a value by nothing (``"Hello {contact_name}, ..."`` on an inbound call says ``"Hello, ..."``).
    Single pass, nothing in a value is interpreted; text without a placeholder is returned unchanged (other
    braces in it too: only ``{contact_...}`` is a placeholder here)."""
    if "{" + CONTACT_PREFIX not in text:
        return text
    values = placeholders(variables)
    filled = _CONTACT_FIELD.sub(lambda m: fill(m.group(0), values), text)
    # An empty value leaves "Hello , there" behind: the spaces are tidied (only when a placeholder was there, so
    # a greeting without one is spoken exactly as written).
    return _SPACE_BEFORE_MARK.sub(r"\1", " ".join(filled.split()))
