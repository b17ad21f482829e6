"""Audience segments: which of a campaign's entries it contacts, as conditions on each entry's variables, all of
which must hold (``CampaignRules.segment``; none: everyone).

Pure, no database: :func:`matches` (and :func:`matcher`, the same with its constants prepared once, for an import
of 50,000 rows) takes the conditions and one entry's variables, built by :func:`subject`: the import's extra
columns plus ``name``, ``phone`` (E.164) and ``timezone`` (the contact's own zone, '' when the campaign's applies).
Entries outside the segment are kept but never contacted (state ``excluded``; ``voicebot.campaigns.store``).

What each operator means:

* Text is compared trimmed and case-insensitively (NFKC, then Unicode case folding), so ``" Gold"`` is ``gold``.
* ``exists``: the variable is there and not blank; ``missing``: the opposite.  A CSV column is in every row, so a
  blank cell is missing.
* ``eq``, ``in``, ``contains`` (a substring) hold only for a variable that exists; ``ne`` and ``not_in`` are their
  exact negations, so a contact without the variable *is* ``ne "gold"``.
* ``gt``, ``ge``, ``lt``, ``le`` compare numbers: the variable read as a decimal number (``-3``, ``2.5``, ``1e3``;
  the dot is the decimal separator).  A value that is not a number (blank, ``n/a``, ``1,5``, ``inf``) matches none
  of them: neither ``gt 10`` nor ``le 10``, so a list with junk in a numeric column never reaches those rows by
  a numeric condition.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Op = Literal["eq", "ne", "in", "not_in", "exists", "missing", "contains", "gt", "ge", "lt", "le"]
EXCLUDED = "excluded"
"""The state of an entry outside its campaign's segment."""
NUMERIC = frozenset({"gt", "ge", "lt", "le"})
LISTS = frozenset({"in", "not_in"})
PRESENCE = frozenset({"exists", "missing"})
MAX_CONDITIONS = 10
MAX_VALUES = 100
MAX_TEXT = 200
Variable = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]
"""As ``rules.VariableName`` (an import column reduced to ``[a-z0-9_]``), repeated here so rules can import this
module without a cycle."""
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)  # ASCII digits, as phones.to_e164


def fold(text: str) -> str:
    """Text as the conditions compare it: trimmed, NFKC-normalised (a spreadsheet's decomposed accents equal typed
    ones), case-folded."""
    return unicodedata.normalize("NFKC", text).strip().casefold()


def number(text: str) -> float | None:
    """A variable's value as a finite number, or None (not ``float()``: it reads ``nan``, ``inf``, ``1_000`` and
    non-ASCII digits)."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None  # 1e999 overflows to inf


class Condition(BaseModel):
    """One condition: ``{"variable": "plan", "op": "in", "values": ["gold", "silver"]}``."""

    model_config = ConfigDict(extra="forbid")

    variable: Variable
    op: Op
    value: str | float | None = None
    """eq, ne, contains: the text (a number is taken as written: 30 is "30"); gt, ge, lt, le: the number."""
    values: Annotated[list[Annotated[str, StringConstraints(max_length=MAX_TEXT)]],
                      Field(max_length=MAX_VALUES)] | None = None
    """in, not_in: the texts, at least one."""

    @field_validator("value", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        if isinstance(value, bool):  # pydantic would read true as 1.0
            raise ValueError("value is a text or a number, not true/false")
        return value

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        op, value, values = self.op, self.value, self.values
        if op in LISTS:
            if value is not None or not values:
                raise ValueError(f"{op} needs values: a list of at least one text (not value)")
            if any(not fold(v) for v in values):
                raise ValueError(f"{op}: a value is blank (use missing or exists for blank cells)")
        elif op in PRESENCE:
            if value is not None or values is not None:
                raise ValueError(f"{op} takes no value or values")
        elif values is not None:
            raise ValueError(f"{op} takes one value, not values")
        elif op in NUMERIC:
            read = number(value) if isinstance(value, str) else value
            if read is None or not math.isfinite(read):
                raise ValueError(f"{op} needs a number as value")
            self.value = float(read)
        else:
            if isinstance(value, float):
                value = str(int(value)) if value.is_integer() else repr(value)
            if value is None or not fold(value) or len(value) > MAX_TEXT:
                raise ValueError(f"{op} needs a value: a text of 1 to {MAX_TEXT} characters (use missing or exists "
                                 "for blank cells)")
            self.value = value
        return self


Segment = Annotated[list[Condition], Field(max_length=MAX_CONDITIONS)]
"""The conditions, all of which must hold."""
Predicate = Callable[[Mapping[str, str]], bool]


def subject(variables: Mapping[str, str], *, name: str, phone: str, timezone: str | None) -> dict[str, str]:
    """What a segment sees of an entry: its variables, its contact's name, its number and its own zone."""
    return {**variables, "name": name, "phone": phone, "timezone": timezone or ""}


def _predicate(condition: Condition) -> Predicate:
    key, op = condition.variable, condition.op
    if op in NUMERIC:
        assert isinstance(condition.value, float)  # the validator made it one
        limit = condition.value
        compare: Callable[[float], bool] = {
            "gt": lambda n: n > limit, "ge": lambda n: n >= limit,
            "lt": lambda n: n < limit, "le": lambda n: n <= limit}[op]

        def numeric(variables: Mapping[str, str]) -> bool:
            read = number(variables.get(key, ""))
            return read is not None and compare(read)

        return numeric
    if op in PRESENCE:
        present = op == "exists"
        return lambda variables: bool(fold(variables.get(key, ""))) is present
    if op in LISTS:
        wanted = frozenset(fold(v) for v in condition.values or ())
        inside = op == "in"
        return lambda variables: (fold(variables.get(key, "")) in wanted) is inside
    text = fold(str(condition.value))
    if op == "contains":
        return lambda variables: text in fold(variables.get(key, ""))
    equal = op == "eq"
    return lambda variables: (fold(variables.get(key, "")) == text) is equal


def matcher(segment: Sequence[Condition]) -> Predicate:
    """A predicate for many entries (each condition's constants folded once)."""
    checks = [_predicate(condition) for condition in segment]
    return lambda variables: all(check(variables) for check in checks)


def matches(segment: Sequence[Condition], variables: Mapping[str, str]) -> bool:
    """Whether an entry with these variables (see :func:`subject`) is in the segment."""
    return matcher(segment)(variables)
