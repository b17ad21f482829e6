"""Phone numbers for campaigns: E.164 normalisation with a default country calling code, and the few countries
whose calling code alone gives the time zone.

A number written in international form (``+34 600 12 34 56``, ``0034600123456``) keeps its own code; one written
nationally (``600 12 34 56``, ``0600 123456``) gets the default code, after one national trunk ``0`` is dropped
(the Italian convention of keeping the ``0`` is not modelled: write Italian numbers with ``+39``).  The result is
``+`` and 8 to 15 digits, as E.164 allows.
"""

from __future__ import annotations

import re

from voicebot.errors import InvalidInput

E164_MIN_DIGITS = 8
E164_MAX_DIGITS = 15
_SEPARATORS = re.compile(r"[\s\-.()/\u00a0\u2010-\u2015]")

ZONE_BY_CALLING_CODE: dict[str, str] = {
    "30": "Europe/Athens", "31": "Europe/Amsterdam", "32": "Europe/Brussels", "33": "Europe/Paris",
    "34": "Europe/Madrid", "36": "Europe/Budapest", "39": "Europe/Rome", "40": "Europe/Bucharest",
    "41": "Europe/Zurich", "43": "Europe/Vienna", "44": "Europe/London", "45": "Europe/Copenhagen",
    "46": "Europe/Stockholm", "47": "Europe/Oslo", "48": "Europe/Warsaw", "49": "Europe/Berlin",
    "351": "Europe/Lisbon", "353": "Europe/Dublin", "358": "Europe/Helsinki", "420": "Europe/Prague",
    "54": "America/Argentina/Buenos_Aires", "57": "America/Bogota", "51": "America/Lima",
    "58": "America/Caracas", "502": "America/Guatemala", "503": "America/El_Salvador",
    "506": "America/Costa_Rica", "598": "America/Montevideo",
    "27": "Africa/Johannesburg", "234": "Africa/Lagos", "254": "Africa/Nairobi",
    "81": "Asia/Tokyo", "82": "Asia/Seoul", "86": "Asia/Shanghai", "91": "Asia/Kolkata", "972": "Asia/Jerusalem",
}
"""Calling codes of countries with one time zone for (nearly) all their numbers.  Deliberately absent: codes that
span several zones (+1 United States and Canada, +7, +52 Mexico, +55 Brazil, +61 Australia, +62 Indonesia, ...):
``+1 → America/New_York`` would call the west coast at 6 a.m.  Those contacts need a ``timezone`` column, or get
the campaign's default zone.  Calling codes are prefix-free, so at most one entry matches a number."""


def to_e164(raw: str, country_code: str = "") -> str:
    """``raw`` as ``+<digits>``, or InvalidInput saying why not.  ``country_code`` (digits, e.g. ``34``) is given to a
    number written without one; without it such a number is refused rather than guessed."""
    value = _SEPARATORS.sub("", raw.strip())
    if value.startswith("00"):
        value = "+" + value[2:]
    if value.startswith("+"):
        digits = value[1:]
    else:
        if not country_code:
            raise InvalidInput("the number has no country calling code: write it as +<code><number>, or set the "
                               "campaign's country_code", field="phone")
        if country_code == "1" and len(value) == 11 and value.startswith("1"):
            digits = value  # North American numbers are often written 1-555-123-4567: the 1 is the code
        else:
            digits = country_code + (value[1:] if value.startswith("0") else value)
    if not digits.isascii() or not digits.isdigit():
        raise InvalidInput("a phone number may hold only digits, spaces, dashes, dots, brackets and a leading +",
                           field="phone")
    if not E164_MIN_DIGITS <= len(digits) <= E164_MAX_DIGITS:
        raise InvalidInput(f"a phone number has {E164_MIN_DIGITS} to {E164_MAX_DIGITS} digits with its country "
                           f"code (this one has {len(digits)})", field="phone")
    return "+" + digits


def zone_of_number(e164: str) -> str | None:
    """The time zone of a number's country when the country has one zone, else None."""
    digits = e164.removeprefix("+")
    for length in (1, 2, 3):
        found = ZONE_BY_CALLING_CODE.get(digits[:length])
        if found is not None:
            return found
    return None
