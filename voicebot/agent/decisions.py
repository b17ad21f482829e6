"""The decision layer for the few actions that matter on a phone line: a person, and the end of the call.

A small model fumbles tool calls (Qwen2.5 0.5B was seen answering "yes, I can speak to someone" instead of
transferring, and choosing ``hang_up`` for a billing question).  A caller who asks for a person must reach
one whatever the model does, and a call must never be cut off because the model guessed.  So, before the
model runs, the caller's words (or keys) are read here:

* an explicit request for a person ("put me through to someone", "can I talk to a real person",
  "operator", "front desk" when that is a target, DTMF ``0``), or a "yes" to the agent's own offer to put
  the caller through → **transfer**, to the target the caller named or else the agent's first person-like
  target;
* a goodbye with nothing else asked ("thanks, bye", "that's all, goodbye") → the model says goodbye, then
  **hang up**; a model's own ``hang_up`` is honoured only then.

Pure functions on text: no I/O, easy to test.  The phrases are English and Spanish (the two languages with a
message catalog, voicebot.i18n): one set of patterns for both, because callers mix them ("vale, bye").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from voicebot.agent.followups import mentions, names_other_day
from voicebot.llm.base import ChatMessage

Action = Literal["transfer", "hang_up"]

_PERSON = (r"(?:a |an |the |some |your )?(?:real |live |actual |human )?"
           r"(?:person|human(?: being)?|someone|somebody|some one|agent|operator|representative|rep|"
           r"receptionist|staff|member of staff|colleague|manager|front desk|reception|people|man|woman|"
           r"employee|attendant)")
_PERSONA = (r"(?:(?:una|un|el|la|alg[uú]n|alguna) )?(?:persona(?: real)?|humano|alguien|agente|operador|operadora|"
            r"recepci[oó]n|recepcionista|compa[nñ]er[oa]|encargad[oa]|responsable|emplead[oa]|gerente)")
_ASK_PERSON = re.compile(
    # "through to": speech recognition hears "put me through" as "let me through" / "get me through".
    r"\b(?:(?:speak|talk|chat)(?:ing)? (?:to|with)|(?:through|thru) to|connect me(?: to| with)?|"
    r"transfer me(?: to)?|get me|give me|pass me(?: on)?(?: to)?|want|need|like|reach)\s+" + _PERSON + r"\b"
    r"|\b(?:hablar|hable|hablo|p[aá]s[ae]me|p[oó]ng[ae]me|p[oó]nme|comun[ií]qu[ae]me|quiero|necesito) con\s+"
    + _PERSONA + r"\b",
    re.IGNORECASE)
_BARE_ASK = re.compile(r"^\W*(?:operator|representative|human|real person|a person|agent|reception|"
                       r"front desk|transfer(?: me)?|put me through|operador|operadora|una persona|"
                       r"con una persona|recepci[oó]n)\W*(?:(?:please|por favor)\W*)?$", re.IGNORECASE)
_TRANSFER_ME = re.compile(r"\b(?:transfer|put) me\b|\bput me (?:through|thru)\b|\bconnect me\b"
                          r"|\b(?:p[aá]s[ae]me|p[oó]ng[ae]me|p[oó]nme|comun[ií]qu[ae]me|transfi[eé]r[ae]me)\b",
                          re.IGNORECASE)
_DTMF_ZERO = re.compile(r"\(DTMF: 0\)")
_OFFER = re.compile(r"\b(?:put you (?:through|thru)|transfer you|connect you|pass you"
                    r"|le pase|pasarle|ponerle|le ponga|transferirle|le transfiera|comunicarle)\b", re.IGNORECASE)
_YES = re.compile(r"^\W*(?:yes|yeah|yep|yup|sure|ok(?:ay)?|please|please do|yes please|go ahead|do it|"
                  r"that would be (?:great|good|nice)|i would|i'd like that|absolutely|of course|certainly|"
                  r"s[ií]|claro|vale|de acuerdo|por favor|perfecto|muy bien|adelante|por supuesto)\b",
                  re.IGNORECASE)
_NO = re.compile(r"\b(?:no|not|don't|do not|never|nunca|tampoco)\b", re.IGNORECASE)
_GOODBYE = re.compile(r"\b(?:good ?bye|bye(?: bye)?|see you|talk to you later|have a (?:good|nice) (?:day|one)|"
                      r"that'?s all|that is all|nothing else|no more questions|hang up|"
                      r"adi[oó]s|hasta luego|hasta pronto|hasta mañana|chao|chau|eso es todo|nada m[aá]s|"
                      r"que tenga (?:un )?buen d[ií]a)\b", re.IGNORECASE)
_PERSON_TARGET = re.compile(r"operator|person|front desk|reception|human|staff|desk|office|support|team",
                            re.IGNORECASE)


@dataclass(frozen=True)
class Decision:
    action: Action
    target: str = ""
    """For ``transfer``: the name of one of the agent's transfer targets."""
    reason: str = ""


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split())


def asks_for_person(text: str, targets: Sequence[str] = ()) -> bool:
    """Whether the caller explicitly asks to be put through to a person (or pressed 0)."""
    if _DTMF_ZERO.search(text):
        return True
    norm = _norm(text)
    if _ASK_PERSON.search(norm) or _BARE_ASK.search(norm):
        return True
    # "Put me through to sales", "transfer me to the workshop": a named target.
    return bool(_TRANSFER_ME.search(norm) and named_target(norm, targets))


def named_target(text: str, targets: Sequence[str]) -> str:
    """The target whose name the caller said (longest first, so "front desk" beats "desk")."""
    norm = _norm(text)
    for name in sorted(targets, key=len, reverse=True):
        if name and re.search(r"\b" + re.escape(_norm(name)) + r"\b", norm):
            return name
    return ""


def default_target(targets: Sequence[str]) -> str:
    """Where "a person" goes: the first target whose name reads like one, else the first target."""
    for name in targets:
        if _PERSON_TARGET.search(name):
            return name
    return targets[0] if targets else ""


def accepts_offer(text: str, last_agent_text: str) -> bool:
    """A "yes" to the agent's own offer to put the caller through."""
    norm = _norm(text)
    return bool(_OFFER.search(last_agent_text) and _YES.search(norm) and not _NO.search(norm)
                and "?" not in norm)


def says_goodbye(text: str) -> bool:
    """A closing remark with no question in it."""
    norm = _norm(text)
    return bool(_GOODBYE.search(norm)) and "?" not in norm and not asks_for_person(norm)


def decide(text: str, memory: Sequence[ChatMessage], transfer_targets: Mapping[str, str]) -> Decision | None:
    """The action the caller's turn ``text`` calls for, or None (let the model answer)."""
    targets = list(transfer_targets)
    last_agent = next((m.content for m in reversed(memory) if m.role == "assistant"), "")
    if targets:
        if asks_for_person(text, targets):
            return Decision("transfer", named_target(text, targets) or default_target(targets), "asked")
        if accepts_offer(text, last_agent):
            return Decision("transfer", named_target(last_agent, targets) or default_target(targets), "offer")
    if says_goodbye(text):
        return Decision("hang_up", reason="goodbye")
    return None


_DONT_KNOW = re.compile(r"\b(?:do not know|don't know|dont know|not sure|no information|cannot help|can't help|"
                        r"unable to (?:help|answer)|no lo s[eé]|no sé|no tengo (?:esa |es[ao] )?informaci[oó]n|"
                        r"no puedo ayudar)\b", re.IGNORECASE)


def says_dont_know(reply: str) -> bool:
    """The reply says the agent could not answer (English or Spanish)."""
    return bool(_DONT_KNOW.search(reply))


def offer_after_unknown(reply: str, transfer_targets: Mapping[str, str],
                        offer: str = "Would you like me to put you through to a colleague?") -> str:
    """The sentence to add (``offer``, in the agent's language) when the agent could not answer and did not offer
    a person itself ("" if none)."""
    if not transfer_targets or not _DONT_KNOW.search(reply) or _OFFER.search(reply):
        return ""
    return offer


# ---------------------------------------------------------------------------------------------- grounding guard
_NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                 "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "fifteen": "15",
                 "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "hundred": "100",
                 "noon": "12", "midnight": "12"}
# "uno/una/un" left out: they are the article far more often than the number.  Only for Spanish agents: "once"
# (11) and "dos" are English words too ("once you arrive...").
_SPANISH_NUMBER_WORDS = {"dos": "2", "tres": "3", "cuatro": "4", "cinco": "5", "seis": "6", "siete": "7", "ocho": "8",
                         "nueve": "9", "diez": "10", "once": "11", "doce": "12", "quince": "15", "veinte": "20",
                         "treinta": "30", "cuarenta": "40", "cincuenta": "50", "sesenta": "60", "cien": "100",
                         "mediodía": "12", "medianoche": "12"}
_DIGITS = re.compile(r"\d+")
_WORD = re.compile(r"[a-zñáéíóú]+")
# A sentence ends at its mark *and the space after it*, which goes with it: the voice loop speaks a sentence only
# once whitespace follows its mark, so a space kept back here would hold the sentence too.  The last sentence
# is let through by finish().
_SENTENCE_END = re.compile(r"[.!?]\s+")
UNKNOWN_REPLY = "I am sorry, I do not know that."


def _numbers(text: str, language: str = "en") -> set[str]:
    lowered = text.lower()
    found = {n.lstrip("0") or "0" for n in _DIGITS.findall(lowered)}
    words = _NUMBER_WORDS | _SPANISH_NUMBER_WORDS if language.lower().startswith("es") else _NUMBER_WORDS
    found.update(words[w] for w in _WORD.findall(lowered) if w in words)
    return found


_CLAIMS_YES = re.compile(r"^\W*(?:yes|yeah|sure|of course|certainly|absolutely|we do|we have|we can|we sell|"
                         r"we offer)\b", re.IGNORECASE)
_SAYS_CLOSED = re.compile(r"\bclosed\b", re.IGNORECASE)
_SAYS_OPEN = re.compile(r"\bopen\b", re.IGNORECASE)
_CLAIMS_OPEN = re.compile(r"\b(?:yes|open)\b", re.IGNORECASE)
_DENIES = re.compile(r"\b(?:no|not|never)\b|n't\b", re.IGNORECASE)
_MENTIONS_CLOSED = re.compile(r"\bclosed?\b", re.IGNORECASE)


class GroundingGuard:
    """Holds the reply back one sentence at a time and stops it at the first sentence that names a number
    (a price, a time, a count) found nowhere in the knowledge or the conversation: a small model invents
    prices ("a baguette costs 10 dollars") for what the knowledge does not list.  The sentence and all after
    it are replaced by :data:`UNKNOWN_REPLY`.  The voice loop speaks whole sentences anyway, so holding a
    sentence until its end costs the caller nothing.

    The first sentence is also checked against what the knowledge says about the question (English agents; the
    lines come from ``voicebot.agent.followups``): a closed day said to be open, another day than the one asked
    about, an "I do not know" where a line answers it, or an answer about something else than what was asked.
    Such a sentence is replaced by the knowledge's own line, and the rest of the reply is dropped: a line of the
    agent's knowledge is never an invented fact."""

    def __init__(self, knowledge: Sequence[str], conversation: Sequence[str], *, closed_line: str = "",
                 known_line: str = "", topic: frozenset[str] = frozenset(), unheard: bool = False,
                 day: tuple[str, str] = ("", ""), hours: bool = False, unknown_reply: str = "",
                 language: str = "en") -> None:
        self.language = language
        self.allowed = set().union(*(_numbers(t, language) for t in (*knowledge, *conversation)))
        self.unknown_reply = unknown_reply or UNKNOWN_REPLY
        """What replaces an invented sentence, in the agent's language."""
        self.closed_line = closed_line
        """The knowledge's line saying the day the caller asked about is closed ("On Monday we are closed."), or
        "": a first sentence saying it is open is replaced by "No." and that line (Qwen 0.5B answered "Yes, we
        are open on Monday" with that line in its prompt, twice in a row on the exam)."""
        self.known_line = known_line
        """The one knowledge line holding every content word of the question (``followups.answer_line``), or
        "": a first sentence saying "I do not know", or one about something else than the question's ``topic``
        words, is replaced by it (the answer is in the model's prompt; asked "how much does one cost?" after "do
        you sell croissants?", Qwen 0.5B priced the sourdough loaf)."""
        self.topic = topic
        self.unheard = unheard
        """The knowledge never names what the question is about (``followups.unheard_of``): a first sentence
        saying "yes" or naming a number is invented (Qwen 0.5B priced a baguette the bakery does not list at a
        croissant's 3 dollars, a number the number check alone lets through)."""
        self.day = day
        """(the weekday the question asks about, the knowledge's lines for it) or ("", ""): a first sentence
        speaking of other days only, saying "I do not know", or saying it is closed when the lines say it is
        open, is replaced by those lines (asked "when do you close on Saturday?", Qwen 0.5B answered "We are
        closed on Sunday.", and once "On Saturday we are closed for emergencies...")."""
        self.hours = hours
        """The question asks when the day opens or closes: a first sentence giving times the day's lines do not
        have is replaced by them (asked when the bakery opens on Friday, Qwen 0.5B gave Sunday's hours)."""
        self.pending = ""
        self.tripped = False
        self.reason = ""
        """Why it tripped: "number" (a number found nowhere), "closed_day", "other_day", "known_line" or
        "unknown_topic"."""
        self.spoken = ""
        """Everything let through (and the replacement), in order."""

    def _check(self, sentence: str) -> list[str]:
        if self.tripped:
            return []
        if self.closed_line and not self.spoken and not _MENTIONS_CLOSED.search(sentence):
            if _CLAIMS_OPEN.search(sentence) and not _DENIES.search(sentence):
                self.tripped, self.reason = True, "closed_day"
                sentence = f"No. {self.closed_line}"
            elif _DONT_KNOW.search(sentence):  # it does know: the line is in its prompt
                self.tripped, self.reason = True, "closed_day"
                sentence = self.closed_line
            if self.tripped:
                self.spoken += sentence
                return [sentence]
        if self.day[1] and not self.spoken and (
                names_other_day(sentence, self.day[0]) or _DONT_KNOW.search(sentence)
                or (_SAYS_CLOSED.search(sentence) and not _SAYS_OPEN.search(sentence)
                    and _SAYS_OPEN.search(self.day[1]))
                or (self.hours and _numbers(sentence, self.language) - _numbers(self.day[1], self.language))):
            self.tripped, self.reason = True, "other_day"
            self.spoken += self.day[1]
            return [self.day[1]]
        if self.known_line and not self.spoken and (
                _DONT_KNOW.search(sentence) or (self.topic and not mentions(sentence, self.topic))):
            self.tripped, self.reason = True, "known_line"
            self.spoken += self.known_line
            return [self.known_line]
        if self.unheard and not self.spoken and (_CLAIMS_YES.search(sentence) or _numbers(sentence, self.language)):
            self.tripped, self.reason = True, "unknown_topic"
            self.spoken += self.unknown_reply
            return [self.unknown_reply]
        if _numbers(sentence, self.language) - self.allowed:
            self.tripped, self.reason = True, "number"
            sentence = self.unknown_reply if not self.spoken or self.spoken.endswith((" ", "\n")) \
                else " " + self.unknown_reply
        self.spoken += sentence
        return [sentence]

    def push(self, text: str) -> list[str]:
        out: list[str] = []
        self.pending += text
        while (match := _SENTENCE_END.search(self.pending)) is not None:
            sentence, self.pending = self.pending[:match.end()], self.pending[match.end():]
            out.extend(self._check(sentence))
        return out

    def finish(self) -> list[str]:
        pending, self.pending = self.pending, ""
        return self._check(pending) if pending else []
