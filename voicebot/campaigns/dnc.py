"""Do-not-call, the pure parts: :class:`DncList` (is this number blocked for this campaign?) and
:func:`asks_not_to_be_contacted` (did the contact just ask us to stop?).

The channels call :func:`asks_not_to_be_contacted` on what a contact says or writes during a campaign
conversation; when it answers True they add the number to the global list (``voicebot.campaigns.store.add_dnc``
with source ``phrase``, or ``reply`` for a bare STOP on WhatsApp/e-mail) and end the conversation politely.  The
detector leans towards precision on sentences ("I can't stop laughing" is not an opt-out) and towards recall on
one-word replies: STOP, UNSUBSCRIBE, STOPALL, END, QUIT, OPTOUT (the SMS industry's keywords) and Spanish BAJA.
CANCEL is not among them: in a conversation about a booking it means the booking.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_TEXT = 2000
"""Only the start of a long message is read (an opt-out is short; a regex over megabytes is not)."""

KEYWORDS = frozenset({"stop", "stopall", "stop all", "unsubscribe", "end", "quit", "optout", "opt out", "baja",
                      "stop please", "please stop", "unsubscribe please", "please unsubscribe", "baja por favor"})
"""Whole replies (after lower-casing and dropping punctuation) that are an opt-out on their own."""

_CONTACT_VERB = r"(?:call(?:ing)?|phon(?:e|ing)|ring(?:ing)?|text(?:ing)?|messag(?:e|ing)|e ?mail(?:ing)?|" \
                r"contact(?:ing)?|bother(?:ing)?|spam(?:ming)?)"
_LIST = r"(?:list|lists|database|records|system|calling list|call list|mailing list|contact list)"
_PATTERNS: dict[str, list[tuple[re.Pattern[str], bool]]] = {
    # (pattern, negatable): a negatable phrase preceded by "don't want to", "not", ... is no opt-out.
    "en": [
        (re.compile(rf"\bstop {_CONTACT_VERB} (?:me|us|this number|my number|here)\b"), True),
        (re.compile(rf"\b(?:do not|dont|never|don t) {_CONTACT_VERB} (?:me|us|this number|my number)"
                    r" (?:again|anymore|any more|ever)\b"), False),
        (re.compile(rf"\bnever {_CONTACT_VERB} (?:me|us|this number) again\b"), False),
        (re.compile(rf"\b(?:remove|delete|take|erase|drop) (?:me|us|my number|my details|this number) "
                    rf"(?:off|from|out of) (?:your|the|this|all your|any) {_LIST}\b"), True),
        (re.compile(r"\b(?:put|add) (?:me|us|my number|this number) (?:on|to) (?:your|the) (?:do not|dont) "
                    r"(?:call|contact) list\b"), True),
        (re.compile(r"\bunsubscribe\b"), True),
        (re.compile(r"\bopt (?:me )?out\b"), True),
        (re.compile(rf"\bno more {_CONTACT_VERB}s?\b"), False),
        (re.compile(r"\b(?:leave|let) me alone\b"), True),
    ],
    "es": [
        (re.compile(r"\bno (?:me|nos) (?:llames?|llamen|llameis|vuelvas? a llamar|vuelvan a llamar|"
                    r"escribas?|escriban|contactes?|contacten|molestes?|molesten)"
                    r"(?: mas\b| nunca\b| de nuevo\b| ?,|$)"), False),
        (re.compile(r"\bno (?:vuelvas?|vuelvan) a (?:llamarme|llamarnos|escribirme|contactarme|molestarme)\b"), False),
        (re.compile(r"\bdej(?:a|e|en|ad) de (?:llamarme|llamarnos|llamar|escribirme|molestarme|contactarme)\b"), False),
        (re.compile(r"\b(?:dar(?:me|nos)?|dame|denme|deme|dadme|me doy|me quiero dar|quiero dar(?:me)?) de baja\b"),
         True),
        (re.compile(r"\b(?:borr|quit|elimin|sac)(?:a|e|en|ar)(?:me|nos) de (?:la|su|tu|vuestra|esta|sus|tus) "
                    r"(?:lista|listas|base de datos)\b"), True),
        (re.compile(r"\bno (?:quiero|queremos|deseo) (?:que me llamen|que me llames|que me escriban|"
                    r"recibir (?:mas )?(?:llamadas|mensajes|correos))\b"), False),
        (re.compile(r"\bno (?:me|nos) interesa(?:n)? (?:que me llamen|sus llamadas|recibir llamadas)\b"), False),
    ],
}
_NEGATIONS = {
    "en": re.compile(r"\b(?:not|dont|don t|never|wont|won t|didnt|didn t|doesnt|doesn t|cant|can t|cannot)\b"
                     r"(?: \w+){0,3} ?$"),
    "es": re.compile(r"\b(?:no|nunca|jamas)\b(?: \w+){0,3} ?$"),
}
"""A negation within the three words before a negatable phrase, in the same clause ("No, dame de baja" is an
opt-out: the comma ends the "no").  A bare English "no" is not one ("No. Stop calling me.")."""


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", text[:MAX_TEXT].lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("'", " ")
    text = re.sub(r"[.,;:!?\u00a1\u00bf]+", " , ", text)  # clause breaks stay (as a token no \w matches)
    text = re.sub(r"[^\w\s,]", " ", text)
    # "don't" → "don t" above; the patterns accept both "dont" and "don t".
    return re.sub(r"\s+", " ", text).strip(" ,")


def asks_not_to_be_contacted(text: str, language: str = "en") -> bool:
    """Whether ``text`` (said or written by a contact) asks not to be contacted again.

    The phrases of ``language`` (its base: ``es-MX`` → ``es``) and of English are checked: contacts answer a
    Spanish campaign with "STOP" or "unsubscribe" too.  An unknown language checks every language known."""
    said = _normalise(text)
    if not said:
        return False
    if re.sub(r"\s+", " ", said.replace(",", " ")).strip() in KEYWORDS:
        return True
    base = language.lower().replace("_", "-").split("-")[0]
    languages = [base, "en"] if base in _PATTERNS else list(_PATTERNS)
    for lang in dict.fromkeys(languages):
        negation = _NEGATIONS[lang]
        for pattern, negatable in _PATTERNS[lang]:
            for match in pattern.finditer(said):
                if negatable and negation.search(said[: match.start()]):
                    continue
                return True
    return False


@dataclass(frozen=True)
class DncList:
    """A snapshot of the do-not-call list: numbers blocked everywhere, and per campaign."""

    global_numbers: frozenset[str] = frozenset()
    by_campaign: dict[int, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[tuple[str, int | None]]) -> DncList:
        """From (phone, campaign_id or None) pairs, as the table holds them."""
        everywhere: set[str] = set()
        per: dict[int, set[str]] = {}
        for phone, campaign_id in rows:
            if campaign_id is None:
                everywhere.add(phone)
            else:
                per.setdefault(campaign_id, set()).add(phone)
        return cls(frozenset(everywhere), {k: frozenset(v) for k, v in per.items()})

    def is_blocked(self, phone: str, campaign_id: int | None = None) -> bool:
        """Whether ``phone`` (E.164) must not be contacted, by any campaign or by ``campaign_id``."""
        if phone in self.global_numbers:
            return True
        return campaign_id is not None and phone in self.by_campaign.get(campaign_id, frozenset())


def is_blocked(dnc: DncList, phone: str, campaign_id: int | None = None) -> bool:
    """:meth:`DncList.is_blocked` as a function."""
    return dnc.is_blocked(phone, campaign_id)
