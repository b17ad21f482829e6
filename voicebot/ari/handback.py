"""Eva as a dialplan step: what the dialplan may ask of Eva, and what Eva hands back to it.

**Asking** (which flow or agent runs).  A designer writes::

    exten => 201,1,Set(EVA_FLOW=main-menu)        ; or Set(EVA_AGENT=front-desk)
     same => n,Gosub(eva-stasis,s,1(did=201))
     same => n,GotoIf($["${EVA_RESULT}" = "continue"]?menu-done,1)

The choice travels in the channel variables ``EVA_FLOW`` / ``EVA_AGENT``, *not* in ``Stasis()`` arguments.
Why: Asterisk substitutes variables into the application data *before* it splits it at commas, so any
unfiltered caller value in a ``Stasis()`` line (``did=${EXTEN}`` -- a caller dialling ``200,flow=x`` --, a
``${CALLERID(name)}``, a SIP header) appends arguments of the caller's choosing, and nothing Eva receives says
which arguments were written and which were substituted.  The ``did=`` mistake is common and survives review;
a whole-value ``Set(EVA_FLOW=${EXTEN})`` is not a slip, and the dialplan validator refuses it from designers
(``EVA_FLOW``/``EVA_AGENT`` may be set to a literal name only, every other ``EVA_*`` not at all).  A channel
variable is not split, a SIP caller cannot set one, and Eva clears both when it reads them, so a channel that
Eva later transfers to another number Eva answers is routed by that number, not by the old choice.
``flow=``/``agent=``/``direction=`` in ``Stasis()`` arguments stay honoured only on channels Eva originated
itself (the ``EVA_ORIGIN`` proof, :mod:`voicebot.ari.origin`).

**Handing back.**  When a flow ends with the result ``continue`` (or an agent hands the call back), Eva sets
``EVA_RESULT`` and ``EVA_VAR_<name>`` for every collected variable, then lets the channel go on at the next
priority after ``Stasis()``.  The values are caller data and the dialplan substitutes them into application
arguments and ``$[...]`` expressions, so :func:`dialplan_variables` keeps only letters, digits, space and
``+ - . @ _ # *`` (no ``,`` that splits arguments, no ``"`` ``'`` ``$`` ``{`` ``[`` ``(`` ``?`` ``:`` ``|``
``&`` ``=`` ``;`` ``\\`` that would change an expression, a jump or a condition, no control characters),
at most :data:`MAX_VALUE_CHARS` characters each and :data:`MAX_VARIABLES` variables.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

FLOW_VARIABLE = "EVA_FLOW"
AGENT_VARIABLE = "EVA_AGENT"
RESULT_VARIABLE = "EVA_RESULT"
VAR_PREFIX = "EVA_VAR_"
MAX_VALUE_CHARS = 128
MAX_VARIABLES = 50
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
"""A flow variable's name (the flow spec's VarName)."""
CHOICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
"""A flow or agent name the dialplan may ask for."""
RESULT_RE = re.compile(r"[^A-Za-z0-9_-]")
_SAFE_PUNCTUATION = frozenset(" +-.@_#*")


def clean_value(value: object) -> str:
    """A caller-supplied value made safe to substitute anywhere in a dialplan line (see the module doc)."""
    text = unicodedata.normalize("NFC", str(value))
    kept = "".join(c for c in text if (c.isalnum() and unicodedata.category(c)[0] in "LN") or c in _SAFE_PUNCTUATION)
    return " ".join(kept.split())[:MAX_VALUE_CHARS].strip()


def dialplan_variables(result: str, variables: Mapping[str, object]) -> dict[str, str]:
    """The channel variables a hand-back sets: ``EVA_RESULT`` and ``EVA_VAR_<name>`` (names that are not
    flow variable names are dropped; ``EVA_RESULT`` is cut to a result name, ``continue`` when empty)."""
    out = {RESULT_VARIABLE: RESULT_RE.sub("", str(result))[:40] or "continue"}
    for name, value in list(variables.items())[:MAX_VARIABLES]:
        if isinstance(name, str) and NAME_RE.match(name):
            out[VAR_PREFIX + name] = clean_value(value)
    return out


def requested_name(value: str) -> str:
    """The flow/agent name from ``EVA_FLOW``/``EVA_AGENT`` ('' when unset or not a plain name)."""
    value = value.strip()
    return value if CHOICE_RE.match(value) else ""
