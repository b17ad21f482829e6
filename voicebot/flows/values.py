"""The parsers behind a flow's ``collect``: caller words (or keys) -> a validated value, or why not.

Pure functions of the text, the keys and today's date.  Speech arrives as Whisper writes it ("Five five five,
one two three four.", "john at example dot com", "next Tuesday"), so each parser accepts the spoken forms
as well as the written ones, in English and, for a Spanish agent's flow, in Spanish too ("cinco cinco cinco",
"juan arroba ejemplo punto com", "el martes", "el 5 de diciembre", "treinta y cinco", "sí"; callers mix them).
Spanish number words are only read for Spanish flows: "once" and "dos" are English words as well.
Input is untrusted: it is cut to ``MAX_INPUT`` characters before any parsing and no parser backtracks on it
(the designer's own ``pattern`` runs on at most that much text).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, timedelta

import regex

from voicebot.flows.spec import Collect

log = logging.getLogger(__name__)

PATTERN_TIMEOUT_S = 0.05
"""A designer's regular expression gets this long per caller answer: a pattern that backtracks
catastrophically on some input (``(a|aa)+$``) fails that answer instead of freezing every call."""

MAX_INPUT = 500

DIGIT_WORDS = {"zero": 0, "oh": 0, "o": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
               "seven": 7, "eight": 8, "nine": 9}
TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
         "seventeen": 17, "eighteen": 18, "nineteen": 19}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
        "ninety": 90}
SPANISH_DIGITS = {"cero": 0, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6,
                  "siete": 7, "ocho": 8, "nueve": 9}
SPANISH_TEENS = {  # Spanish says 10-29 in one word each
         "diez": 10, "once": 11, "doce": 12, "trece": 13, "catorce": 14, "quince": 15, "dieciséis": 16,
         "dieciseis": 16, "diecisiete": 17, "dieciocho": 18, "diecinueve": 19, "veinte": 20, "veintiuno": 21,
         "veintiún": 21, "veintidós": 22, "veintidos": 22, "veintitrés": 23, "veintitres": 23, "veinticuatro": 24,
         "veinticinco": 25, "veintiséis": 26, "veintiseis": 26, "veintisiete": 27, "veintiocho": 28,
         "veintinueve": 29}
SPANISH_TENS = {"treinta": 30, "cuarenta": 40, "cincuenta": 50, "sesenta": 60, "setenta": 70, "ochenta": 80,
                "noventa": 90}
HUNDREDS = {"doscientos": 200, "doscientas": 200, "trescientos": 300, "trescientas": 300, "cuatrocientos": 400,
            "quinientos": 500, "seiscientos": 600, "setecientos": 700, "ochocientos": 800, "novecientos": 900}
"""Spanish hundreds are one word each ("quinientos"); "cien"/"ciento" work like "hundred"."""
YES = {"yes", "yeah", "yep", "yup", "correct", "right", "sure", "ok", "okay", "affirmative", "absolutely",
       "indeed", "exactly", "true", "definitely", "that's right", "that is right", "it is", "si", "sí",
       "claro", "vale", "correcto", "exacto", "afirmativo", "de acuerdo", "por supuesto", "eso es"}
NO = {"no", "nope", "nah", "wrong", "incorrect", "negative", "not", "false", "never", "that's wrong",
      "nunca", "incorrecto", "negativo"}
MONTHS = {name: i + 1 for i, name in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"])}
MONTHS.update({name[:3]: num for name, num in list(MONTHS.items())})
MONTHS["sept"] = 9
MONTHS.update({name: i + 1 for i, name in enumerate(  # no Spanish abbreviations: "mar" is the sea
    ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
     "noviembre", "diciembre"])})
MONTHS["setiembre"] = 9
WEEKDAYS = {name: i for i, name in enumerate(
    ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"])}
WEEKDAYS.update({name: i for i, name in enumerate(
    ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"])})
WEEKDAYS.update({"miercoles": 2, "sabado": 5, "sábados": 5, "domingos": 6})


@dataclass(frozen=True)
class Numbers:
    """The number words of a flow's language: English, or English and Spanish for a Spanish flow."""

    digits: dict[str, int]
    teens: dict[str, int]
    tens: dict[str, int]
    hundreds: dict[str, int]
    hundred: frozenset[str]
    thousand: frozenset[str]
    joiners: frozenset[str]


ENGLISH = Numbers(DIGIT_WORDS, TEENS, TENS, {}, frozenset({"hundred"}), frozenset({"thousand"}),
                  frozenset({"and", "a"}))
SPANISH = Numbers(DIGIT_WORDS | SPANISH_DIGITS, TEENS | SPANISH_TEENS, TENS | SPANISH_TENS, HUNDREDS,
                  frozenset({"hundred", "cien", "ciento"}), frozenset({"thousand", "mil"}),
                  frozenset({"and", "a", "y"}))


def numbers_for(language: str) -> Numbers:
    return SPANISH if language.lower().startswith("es") else ENGLISH
ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
            "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
            "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
            "nineteenth": 19, "twentieth": 20, "thirtieth": 30, "primero": 1, "uno": 1}
LEAD_IN = re.compile(r"^(?:(?:well|um+|uh+|so|yes|hi|hello|hola|bueno|pues|sí)[,.]?\s+)?(?:my name is|my name's|"
                     r"the name is|this is|it's|it is|i am|i'm|call me|me llamo|mi nombre es|soy)\s+",
                     re.IGNORECASE)
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63}){1,8}$")


@dataclass(frozen=True)
class Parsed:
    value: str | None
    """The normalised value (``2026-12-05``, ``+15551234``, ``booking``), or None when there is none."""
    problem: str = ""
    """Why there is no value: ``no_input`` or ``no_match``."""

    @property
    def ok(self) -> bool:
        return self.value is not None


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped (``"Five-five, five."`` -> ``["five", "five", "five"]``)."""
    return re.findall(r"[a-z0-9@+'áéíóúñ]+", text[:MAX_INPUT].lower().replace("-", " "))


def spoken_digits(text: str, language: str = "en") -> str:
    """Every digit said or written, in order: "five five five, 1 2 3 4" -> "5551234"; "double five" -> "55";
    Spanish pairs: "seis cero cero, treinta y cinco" -> "60035"."""
    vocab = numbers_for(language)
    out: list[str] = []
    repeat = 1
    ws = words(text)
    skip = 0
    for i, word in enumerate(ws):
        if skip:
            skip -= 1
            continue
        if word in ("double", "triple"):
            repeat = 2 if word == "double" else 3
            continue
        if word in vocab.digits and word != "o" and not (word == "o" and vocab is SPANISH):
            out.append(str(vocab.digits[word]) * repeat)
        elif word == "o" and out and vocab is ENGLISH:
            out.append("0" * repeat)
        elif word.isdigit():
            out.append(word * repeat if len(word) == 1 else word)
        elif word in vocab.tens and "y" in vocab.joiners and i + 2 < len(ws) and ws[i + 1] == "y" \
                and ws[i + 2] in vocab.digits and ws[i + 2] not in DIGIT_WORDS:
            out.append(str(vocab.tens[word] + vocab.digits[ws[i + 2]]))  # "treinta y cinco" -> "35"
            skip = 2
        elif word in vocab.teens or word in vocab.tens:
            out.append(str(vocab.teens.get(word) or vocab.tens[word]))
        repeat = 1
    return "".join(out)


def spoken_number(text: str, language: str = "en") -> float | None:
    """A number written ("42", "3.5") or said ("forty two", "one hundred and five", "two thousand")."""
    found = re.search(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:[.,]\d+)?", text[:MAX_INPUT])
    if found:
        raw = found.group(0)
        # "1,000" is a thousand; "3,5" is three and a half (a decimal comma).
        raw = raw.replace(",", "") if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", raw) else raw.replace(",", ".")
        if len(raw.lstrip("-").split(".")[0]) > 15:
            return None  # not a number anybody says: never "inf"
        return float(raw)
    vocab = numbers_for(language)
    total, current, seen = 0, 0, False
    for word in words(text):
        if word in vocab.digits and word not in ("o", "oh"):
            current += vocab.digits[word]
        elif word in vocab.teens:
            current += vocab.teens[word]
        elif word in vocab.tens:
            current += vocab.tens[word]
        elif word in vocab.hundreds:
            current += vocab.hundreds[word]
        elif word in vocab.hundred:
            current = max(current, 1) * 100
        elif word in vocab.thousand:
            total += max(current, 1) * 1000
            current = 0
        elif word in vocab.joiners and seen:
            continue
        else:
            if seen:
                break
            continue
        seen = True
    return float(total + current) if seen else None


def parse_date(text: str, today: date, language: str = "en") -> date | None:
    """ISO (2026-12-05), d/m/y, "today", "tomorrow", "the day after tomorrow", a weekday ("on Tuesday":
    the next one, never today), "December 5th", "5th of December", "the fifth" (this month, or next if
    past)."""
    text = text[:MAX_INPUT]
    iso = re.search(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", text)
    if iso:
        return _safe_date(int(iso.group(1)), int(iso.group(2)), int(iso.group(3)))
    slash = re.search(r"\b(\d{1,2})/(\d{1,2})(?:/(\d{2,4}))?\b", text)
    if slash:
        year = int(slash.group(3)) if slash.group(3) else today.year
        year = year + 2000 if year < 100 else year
        return _safe_date(year, int(slash.group(2)), int(slash.group(1)))
    ws = words(text)
    joined = " ".join(ws)
    if "day after tomorrow" in joined or "pasado mañana" in joined:
        return today + timedelta(days=2)
    # "mañana" is tomorrow, except "por la mañana" / "de la mañana" / "esta mañana" (in the morning).
    if "tomorrow" in ws or re.search(r"(?<!la )(?<!esta )\bmañana\b", joined):
        return today + timedelta(days=1)
    if "today" in ws or "hoy" in ws:
        return today
    day = _day_of_month(ws, numbers_for(language))
    # "may" is a month only beside a day ("May 5th"), not in "may I book".
    month = next((MONTHS[w] for w in ws if w in MONTHS and (w != "may" or day is not None)), None)
    if day is not None and month is not None:
        candidate = _safe_date(today.year, month, day)
        if candidate is not None and candidate < today:
            candidate = _safe_date(today.year + 1, month, day)
        return candidate
    if day is not None:
        candidate = _safe_date(today.year, today.month, day)
        if candidate is not None and candidate < today:
            following = today.replace(day=1) + timedelta(days=32)
            candidate = _safe_date(following.year, following.month, day)
        return candidate
    weekday = next((WEEKDAYS[w] for w in ws if w in WEEKDAYS), None)
    if weekday is not None:
        # "Tuesday" and "next Tuesday" both mean the coming one (never today), as most callers mean it.
        return today + timedelta(days=(weekday - today.weekday()) % 7 or 7)
    return None


def _day_of_month(ws: list[str], vocab: Numbers = ENGLISH) -> int | None:
    """"5th", "the fifth", "twenty first": a day written as an ordinal (a bare number is not a date); in Spanish
    also a cardinal before "de" and a month ("el cinco de diciembre", "treinta y uno de enero")."""
    for i, w in enumerate(ws):
        m = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)", w)
        if m:
            return int(m.group(1))
        if w in TENS and i + 1 < len(ws) and ws[i + 1] in ORDINALS and ORDINALS[ws[i + 1]] < 10:
            return TENS[w] + ORDINALS[ws[i + 1]]
        if w in ORDINALS and not (w == "uno" and not _de_month(ws, i)):
            return ORDINALS[w]
        if w.isdigit() and 1 <= int(w) <= 31 and (
                (i + 1 < len(ws) and ws[i + 1] in MONTHS) or _de_month(ws, i) or (i > 0 and ws[i - 1] in MONTHS)):
            return int(w)  # "5 December", "December 5", "5 de diciembre"
        if vocab is not SPANISH:
            continue
        if w in vocab.tens and i + 2 < len(ws) and ws[i + 1] == "y" and ws[i + 2] in vocab.digits:
            if _de_month(ws, i + 2):  # "treinta y uno de enero"; "treinta y dos de enero" is no day
                day = vocab.tens[w] + vocab.digits[ws[i + 2]]
                return day if day <= 31 else None
            continue
        spoken = vocab.digits.get(w) if w not in ("o", "oh") else None
        spoken = vocab.teens.get(w, vocab.tens.get(w)) if spoken is None else spoken
        if spoken is not None and 1 <= spoken <= 31 and _de_month(ws, i):
            return spoken  # "el cinco de diciembre"
    return None


def _de_month(ws: list[str], i: int) -> bool:
    """``ws[i]`` is followed by "de" and a month (the Spanish "5 de diciembre")."""
    return i + 2 < len(ws) and ws[i + 1] == "de" and ws[i + 2] in MONTHS


def _safe_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def spoken_email(text: str) -> str | None:
    """"john dot smith at example dot com" / "John.Smith@Example.com." -> "john.smith@example.com"."""
    raw = text[:MAX_INPUT].strip().lower().rstrip(".")
    direct = re.search(r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}", raw)
    if direct:
        candidate = direct.group(0).rstrip(".")
    else:
        spoken = re.sub(r"\s+(at|arroba)\s+", "@", raw)
        spoken = re.sub(r"\s+(dot|period|point|punto)\s+", ".", spoken)
        spoken = re.sub(r"\s+(underscore|guion bajo|guión bajo)\s+", "_", spoken)
        spoken = re.sub(r"\s+(dash|hyphen|guion|guión)\s+", "-", spoken)
        spoken = re.sub(r"^(my )?(e-?mail )?(address )?(is )?", "", spoken)
        spoken = re.sub(r"^(mi )?(correo )?(electr[oó]nico )?(es )?", "", spoken)
        candidate = spoken.replace(" ", "").replace(",", "")
    return candidate if EMAIL_RE.match(candidate) else None


DIGIT_NAMES: dict[str, set[str]] = {}
# English and Spanish names: a key synonym matches speech only as the whole answer, so "uno" cannot collide.
for _name, _digit in SPANISH.digits.items():
    if _name not in ("o", "oh"):
        DIGIT_NAMES.setdefault(str(_digit), set()).add(_name)
KEY_LEADS = ("number", "option", "press", "número", "numero", "opción", "opcion", "el", "la", "pulse", "marque",
             "la opción", "la opcion", "el número", "el numero", "opción número", "the number", "option number")


def match_choice(collect: Collect, text: str, dtmf: str | None) -> str | None:
    """The choice value the caller pressed or said.  A key must equal a synonym.  Words must contain a
    synonym phrase (the longest wins; two values tied is no match); a key synonym ("1") matches speech only
    when it is the whole answer ("one", "number one", "option 1"), not a digit inside a sentence."""
    assert collect.choices is not None
    if dtmf:
        for value, synonyms in collect.choices.items():
            if dtmf in synonyms or dtmf == value:
                return value
        return None
    said = " ".join(words(text))
    padded = f" {said} "
    best: tuple[int, str] | None = None
    tie = False
    for value, synonyms in collect.choices.items():
        for phrase in [value, *synonyms]:
            norm = " ".join(words(phrase))
            if not norm:
                continue
            if norm.isdigit():
                names = {norm, *DIGIT_NAMES.get(norm, set())}
                hit = said in names or said in {f"{lead} {n}" for lead in KEY_LEADS for n in names}
                strength = 1000 if hit else 0
            else:
                strength = len(norm) if f" {norm} " in padded else 0
            if not strength:
                continue
            if best is None or strength > best[0]:
                best, tie = (strength, value), False
            elif strength == best[0] and best[1] != value:
                tie = True
    if best is None or tie:
        return None
    return best[1]


def yes_no(text: str, dtmf: str | None) -> str | None:
    if dtmf:
        return {"1": "yes", "2": "no"}.get(dtmf)
    ws = words(text)
    joined = " ".join(ws)
    has_no = any(w in NO for w in ws) or any(p in joined for p in NO if " " in p)
    has_yes = any(w in YES for w in ws) or any(p in joined for p in YES if " " in p)
    if has_yes and not has_no:
        return "yes"
    if has_no and not has_yes:
        return "no"
    if has_no and has_yes and ws and ws[0] in NO:
        return "no"  # "no, that's not right" / "no... yes" -> the first word decides
    if has_no and has_yes and ws and ws[0] in YES:
        return "yes"
    return None


def parse(collect: Collect, text: str, *, dtmf: str | None = None, today: date, language: str = "en") -> Parsed:
    """The value of one answer to ``collect`` (speech ``text`` or DTMF ``dtmf`` keys) in a flow whose agent
    speaks ``language``."""
    text = (text or "")[:MAX_INPUT].strip()
    if not text and not dtmf:
        return Parsed(None, "no_input")
    value = _parse(collect, text, dtmf, today, language)
    if value is None:
        return Parsed(None, "no_match")
    if collect.min_length is not None and len(value) < collect.min_length:
        return Parsed(None, "no_match")
    if collect.max_length is not None and len(value) > collect.max_length:
        return Parsed(None, "no_match")
    return Parsed(value)


def _parse(collect: Collect, text: str, dtmf: str | None, today: date, language: str = "en") -> str | None:
    kind = collect.type
    if kind == "choice":
        return match_choice(collect, text, dtmf)
    if kind == "yes_no":
        return yes_no(text, dtmf)
    if kind == "digits":
        digits = dtmf if dtmf else spoken_digits(text, language)
        return digits if digits and digits.isdigit() else None
    if kind == "phone":
        raw = dtmf if dtmf else text
        digits = re.sub(r"\D", "", raw) if re.search(r"\d{3}", raw) else spoken_digits(raw, language)
        plus = "+" if re.search(r"(?:^|\s)\+\s*\d", raw) or " plus " in f" {raw.lower()} " else ""
        return plus + digits if 7 <= len(digits) <= 15 else None
    if kind == "number":
        number = (float(dtmf) if dtmf.isdigit() and len(dtmf) <= 15 else None) if dtmf \
            else spoken_number(text, language)
        if number is None:
            return None
        if (collect.min is not None and number < collect.min) or (collect.max is not None and number > collect.max):
            return None
        return str(int(number)) if number.is_integer() else str(number)
    if kind == "date":
        found = parse_date(text, today, language) if not dtmf else _dtmf_date(dtmf, today)
        return found.isoformat() if found else None
    if kind == "email":
        return spoken_email(text)
    if kind == "regex":
        assert collect.pattern is not None
        candidates = [dtmf] if dtmf else [text.rstrip(".!?"), text, spoken_digits(text, language)]
        for candidate in candidates:
            if candidate and designer_match(collect.pattern, candidate):
                return candidate
        return None
    # text: what Whisper wrote, without its closing full stop or a spoken lead-in ("My name is ...").
    value = dtmf if dtmf else LEAD_IN.sub("", text.strip()).strip().rstrip(".!?,;").strip()
    return value or None


def _dtmf_date(keys: str, today: date) -> date | None:
    """DDMM or DDMMYYYY typed on the keypad."""
    keys = keys.rstrip("#")
    if not keys.isdigit():
        return None
    if len(keys) == 4:
        candidate = _safe_date(today.year, int(keys[2:]), int(keys[:2]))
        if candidate is not None and candidate < today:
            candidate = _safe_date(today.year + 1, int(keys[2:]), int(keys[:2]))
        return candidate
    if len(keys) == 8:
        return _safe_date(int(keys[4:]), int(keys[2:4]), int(keys[:2]))
    return None


_MONTH_NAMES = {
    "en": ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"],
    "es": ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
           "noviembre", "diciembre"],
}


def spoken_value(value: str, kind: str, language: str = "en") -> str:
    """A collected value as a sentence says it: a date "December 5, 2026" / "5 de diciembre de 2026" (stored as
    ISO), digits and phone numbers one by one ("5 5 5 1 2"); anything else as stored."""
    if kind == "date":
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return value
        if language.lower().startswith("es"):
            return f"{day.day} de {_MONTH_NAMES['es'][day.month - 1]} de {day.year}"
        return f"{_MONTH_NAMES['en'][day.month - 1]} {day.day}, {day.year}"
    if kind in ("digits", "phone") and re.fullmatch(r"\+?\d{1,20}", value):
        return " ".join(value)
    return value


def designer_match(pattern: str, text: str) -> bool:
    """``pattern`` (written by a flow designer) matches all of ``text`` (caller data, cut to MAX_INPUT),
    within PATTERN_TIMEOUT_S; a timeout is no match."""
    try:
        return regex.fullmatch(pattern, text[:MAX_INPUT], timeout=PATTERN_TIMEOUT_S) is not None
    except TimeoutError:
        log.warning("a flow's pattern took over %.0f ms on one answer: treated as no match",
                    PATTERN_TIMEOUT_S * 1000)
        return False
