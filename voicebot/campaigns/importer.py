"""Parsing a campaign's contact list (CSV) into rows, and every row that could not be taken with its reason.

Pure and blocking (the API runs it in a worker thread): bytes in, :class:`ParsedCsv` out.  Nothing is dropped
silently: each data line is either a row or a :class:`Problem` (invalid, or a duplicate of an earlier line), and
blank lines are counted.  Numbers already on the do-not-call list or already in the campaign are found later,
against the database (``voicebot.campaigns.store.apply_import``), and reported there.

* Encoding: UTF-8 (with or without a byte-order mark), UTF-16 with a byte-order mark, else Windows-1252 (what a
  spreadsheet saves as "CSV" on many systems); the one used is reported.  A file with NUL bytes is refused (it is
  usually a spreadsheet, not CSV).
* Delimiter: the one of ``,`` ``;`` and tab the header line holds most of.
* Columns: a phone column is required (``phone``, ``phone_number``, ``number``, ``mobile``, ``tel``,
  ``telephone``, ``msisdn``, ``telefono``); ``name`` (or ``nombre``), ``timezone`` (or ``tz``) and
  ``country_code`` are read; every other column becomes a variable (its header reduced to ``[a-z0-9_]``).
* Phone numbers become E.164 (:func:`voicebot.campaigns.phones.to_e164`), with the row's ``country_code`` or else
  the campaign's for numbers written without one.
* Time zone, in order of preference: the row's ``timezone`` (an IANA name, checked); then the zone of the number's
  country where the country has only one (:data:`voicebot.campaigns.phones.ZONE_BY_CALLING_CODE`); then none,
  which means the campaign's default zone at dialling time.  A calling code is never guessed into a zone when
  its country spans several: +1 is not America/New_York (that would ring Los Angeles at 6 a.m.).
* Cells are kept as written: ``=cmd|' /C calc'!A0`` is a variable's value, not a formula, here; whoever exports
  campaign data to a spreadsheet must neutralise such cells there.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass, field
from typing import Literal

from voicebot.campaigns.phones import to_e164, zone_of_number
from voicebot.campaigns.rules import known_zones
from voicebot.errors import InvalidInput

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_ROWS = 50_000
MAX_COLUMNS = 50
MAX_CELL = 1000
"""Characters a variable's value (or a name) may have."""
PHONE_COLUMNS = ("phone", "phone_number", "number", "mobile", "tel", "telephone", "msisdn", "telefono")
NAME_COLUMNS = ("name", "full_name", "nombre")
ZONE_COLUMNS = ("timezone", "time_zone", "tz")
COUNTRY_COLUMNS = ("country_code",)
_DELIMITERS = (",", ";", "\t")
_HEADER_CLEAN = re.compile(r"[^a-z0-9_]+")

ZoneSource = Literal["column", "country", "campaign"]


@dataclass(frozen=True)
class ImportRow:
    line: int
    """Line of the file the row starts on (the header is line 1)."""
    phone: str
    name: str
    variables: dict[str, str]
    timezone: str | None
    """None: the campaign's zone."""
    timezone_source: ZoneSource


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str
    column: str | None = None


@dataclass
class ParsedCsv:
    encoding: str
    delimiter: str
    columns: list[str]
    """The header as reduced (the phone, name, timezone and country columns included)."""
    rows: list[ImportRow] = field(default_factory=list)
    invalid: list[Problem] = field(default_factory=list)
    duplicates: list[Problem] = field(default_factory=list)
    blank_lines: int = 0

    @property
    def data_rows(self) -> int:
        """Lines with data: every one is a row, an invalid row or a duplicate."""
        return len(self.rows) + len(self.invalid) + len(self.duplicates)


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(message, code="csv_invalid", field="file")


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding name)."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                      (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(name), name
            except UnicodeDecodeError as exc:
                raise _refuse(f"the file starts with a {name} byte-order mark but is not {name}") from exc
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"  # every byte is a character: nothing is lost


def _header_name(raw: str) -> str:
    return _HEADER_CLEAN.sub("_", raw.strip().lstrip("\ufeff").lower()).strip("_")[:64]


def _pick(columns: list[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in columns:
            return columns.index(name)
    return None


def parse_csv(data: bytes, *, country_code: str = "", max_rows: int = MAX_ROWS) -> ParsedCsv:
    """Parse a contact list; InvalidInput (``csv_invalid``) when the file as a whole cannot be read (no header, no
    phone column, more than ``max_rows`` rows, a line the CSV reader cannot parse)."""
    text, encoding = decode(data)
    if "\x00" in text:
        raise _refuse("the file holds NUL bytes: save it as CSV (a spreadsheet file is not CSV)")
    first_line = text.split("\n", 1)[0]
    delimiter = max(_DELIMITERS, key=lambda d: (first_line.count(d), d == ","))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)  # blank lines before the header
        if header is None:
            raise _refuse("the file is empty: the first line must name the columns (phone, name, ...)")
        columns = [_header_name(cell) for cell in header]
        for index, name in enumerate(columns, 1):
            if not name:
                raise _refuse(f"column {index} of the header has no name (letters, digits or _)")
        if len(set(columns)) != len(columns):
            twice = sorted({c for c in columns if columns.count(c) > 1})
            raise _refuse(f"the header names a column twice: {', '.join(twice)}")
        if len(columns) > MAX_COLUMNS:
            raise _refuse(f"the file has {len(columns)} columns; at most {MAX_COLUMNS}")
        phone_at = _pick(columns, PHONE_COLUMNS)
        if phone_at is None:
            raise _refuse(f"no phone column: name one of {', '.join(PHONE_COLUMNS)}")
        name_at, zone_at, country_at = (_pick(columns, names) for names in (NAME_COLUMNS, ZONE_COLUMNS,
                                                                            COUNTRY_COLUMNS))
        special = {i for i in (phone_at, name_at, zone_at, country_at) if i is not None}
        parsed = ParsedCsv(encoding=encoding, delimiter=delimiter, columns=columns)
        first_seen: dict[str, int] = {}
        line_before = reader.line_num
        for cells in reader:
            line = line_before + 1
            line_before = reader.line_num
            if not any(cell.strip() for cell in cells):
                parsed.blank_lines += 1
                continue
            if parsed.data_rows >= max_rows:
                raise _refuse(f"the file has more than {max_rows} rows; split it")
            problem, row = _row(cells, line, columns, phone_at, name_at, zone_at, country_at, special, country_code)
            if problem is not None:
                parsed.invalid.append(problem)
            elif row is not None:
                if row.phone in first_seen:
                    parsed.duplicates.append(Problem(line, f"the same number as line {first_seen[row.phone]}",
                                                     columns[phone_at]))
                else:
                    first_seen[row.phone] = line
                    parsed.rows.append(row)
    except csv.Error as exc:
        raise _refuse(f"line {reader.line_num}: the CSV cannot be read ({exc})") from exc
    return parsed


def _row(cells: list[str], line: int, columns: list[str], phone_at: int, name_at: int | None, zone_at: int | None,
         country_at: int | None, special: set[int], country_code: str) -> tuple[Problem | None, ImportRow | None]:
    if len(cells) > len(columns):
        return Problem(line, f"the row has {len(cells)} cells, the header {len(columns)}"), None
    cells = cells + [""] * (len(columns) - len(cells))  # cells missing at the end are empty
    for index, cell in enumerate(cells):
        if len(cell) > MAX_CELL:
            return Problem(line, f"longer than {MAX_CELL} characters", columns[index]), None
    raw_phone = cells[phone_at].strip()
    if not raw_phone:
        return Problem(line, "no phone number", columns[phone_at]), None
    code = country_code
    if country_at is not None and cells[country_at].strip():
        code = cells[country_at].strip().removeprefix("+")
        if not (code.isascii() and code.isdigit() and 1 <= len(code) <= 3):
            return Problem(line, "a country calling code is 1 to 3 digits", columns[country_at]), None
    try:
        phone = to_e164(raw_phone, code)
    except InvalidInput as exc:
        return Problem(line, exc.message, columns[phone_at]), None
    zone: str | None = None
    source: ZoneSource = "campaign"
    if zone_at is not None and cells[zone_at].strip():
        zone = cells[zone_at].strip()
        if zone not in known_zones():
            return Problem(line, "not an IANA time zone (e.g. Europe/Madrid)", columns[zone_at]), None
        source = "column"
    elif (from_country := zone_of_number(phone)) is not None:
        zone, source = from_country, "country"
    variables = {columns[i]: cells[i] for i in range(len(columns)) if i not in special}
    name = cells[name_at].strip()[:200] if name_at is not None else ""
    return None, ImportRow(line, phone, name, variables, zone, source)
