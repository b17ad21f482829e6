"""The campaign CSV parser: E.164 numbers, duplicates and invalid rows reported by line, variables, time zones,
encodings and delimiters, whole-file refusals; and a fuzz over hostile files (odd encodings, BOMs, NULs, huge
fields, formula cells): the parser either refuses the file with ``csv_invalid`` or accounts for every data line."""

from __future__ import annotations

import codecs

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicebot.campaigns.importer import MAX_CELL, parse_csv
from voicebot.campaigns.phones import to_e164, zone_of_number
from voicebot.errors import InvalidInput


def test_numbers_become_e164_with_the_default_or_the_rows_country_code() -> None:
    assert to_e164("+34 600 12 34 56") == "+34600123456"
    assert to_e164("0034 600-12-34-56") == "+34600123456"
    assert to_e164("600 12 34 56", "34") == "+34600123456"
    assert to_e164("0600 123 456", "33") == "+33600123456"  # the national trunk 0 goes
    assert to_e164("(212) 555-0101", "1") == "+12125550101"
    assert to_e164("1-212-555-0101", "1") == "+12125550101"
    for bad, code in (("600123456", ""), ("+34 600 ABC", ""), ("+123", ""), ("+1234567890123456", ""),
                      ("٦٠٠١٢٣٤٥٦", "34"), ("", "34")):
        with pytest.raises(InvalidInput):
            to_e164(bad, code)


def test_zones_come_only_from_countries_with_one() -> None:
    assert zone_of_number("+34600123456") == "Europe/Madrid"
    assert zone_of_number("+351912345678") == "Europe/Lisbon"
    assert zone_of_number("+12125550101") is None  # the US spans six zones
    assert zone_of_number("+525512345678") is None
    assert zone_of_number("+79161234567") is None


def test_a_list_is_parsed_with_every_problem_reported_by_line() -> None:
    data = (
        "Phone,Name,Timezone,Plan,Country Code\n"
        "+34 600 000 001,Ana,,gold,\n"            # 2: Madrid from +34
        "600000002,Bea,Europe/Madrid,silver,\n"    # 3: default code
        "+34600000001,Ana again,,gold,\n"          # 4: duplicate of 2
        "not a number,Carl,,,\n"                   # 5: invalid
        "\n"                                       # 6: blank
        "2125550101,Dan,America/Los_Angeles,,1\n"  # 7: the row's own code and zone
        "2125550102,Eve,Mars/Olympus,,1\n"         # 8: bad zone
        "+12125550103,Fay,,,\n"                    # 9: +1: the campaign's zone
        ",Gus,,,\n"                                # 10: no number
        "+34600000010,Hal,,x,,extra\n"             # 11: too many cells
        "+34600000011,Ivy\n"                       # 12: short row: the rest empty
    )
    parsed = parse_csv(data.encode(), country_code="34")
    assert parsed.columns == ["phone", "name", "timezone", "plan", "country_code"]
    rows = {r.line: r for r in parsed.rows}
    assert sorted(rows) == [2, 3, 7, 9, 12]
    assert (rows[2].phone, rows[2].name, rows[2].timezone, rows[2].timezone_source) == (
        "+34600000001", "Ana", "Europe/Madrid", "country")
    assert rows[2].variables == {"plan": "gold"}
    assert (rows[3].phone, rows[3].timezone_source) == ("+34600000002", "column")
    assert (rows[7].phone, rows[7].timezone) == ("+12125550101", "America/Los_Angeles")
    assert (rows[9].timezone, rows[9].timezone_source) == (None, "campaign")
    assert rows[12].variables == {"plan": ""}
    assert [(p.line, p.reason) for p in parsed.duplicates] == [(4, "the same number as line 2")]
    invalid = {p.line: (p.column, p.reason) for p in parsed.invalid}
    assert sorted(invalid) == [5, 8, 10, 11]
    assert invalid[8] == ("timezone", "not an IANA time zone (e.g. Europe/Madrid)")
    assert invalid[10] == ("phone", "no phone number")
    assert invalid[11][1] == "the row has 6 cells, the header 5"
    assert parsed.blank_lines == 1
    assert parsed.data_rows == 10  # every line with data is accounted for


def test_without_a_default_code_national_numbers_are_refused_not_guessed() -> None:
    parsed = parse_csv(b"phone\n600000002\n+34600000003\n")
    assert [r.phone for r in parsed.rows] == ["+34600000003"]
    assert "no country calling code" in parsed.invalid[0].reason


def test_formula_cells_are_kept_as_data() -> None:
    nasty = "=cmd|' /C calc'!A0"
    parsed = parse_csv(f'phone,note,other\n+34600000001,"{nasty}",@SUM(1+1)\n'.encode())
    assert parsed.rows[0].variables == {"note": nasty, "other": "@SUM(1+1)"}


@pytest.mark.parametrize(("encoding", "bom"), [("utf-8", b""), ("utf-8", codecs.BOM_UTF8),
                                               ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                                               ("cp1252", b"")])
def test_encodings(encoding: str, bom: bytes) -> None:
    data = bom + "phone;nombre;ciudad\r\n+34600000001;José Müller;Logroño\r\n".encode(encoding)
    parsed = parse_csv(data)
    assert parsed.delimiter == ";"
    assert parsed.columns == ["phone", "nombre", "ciudad"]
    assert (parsed.rows[0].name, parsed.rows[0].variables) == ("José Müller", {"ciudad": "Logroño"})


def test_tabs_quotes_and_newlines_inside_cells() -> None:
    parsed = parse_csv(b'phone\tnote\n+34600000001\t"two\nlines"\n+34600000002\tok\n')
    assert parsed.rows[0].variables == {"note": "two\nlines"}
    assert [r.line for r in parsed.rows] == [2, 4]  # the second row starts on line 4


@pytest.mark.parametrize(("data", "says"), [
    (b"", "empty"), (b"\n\n", "empty"), (b"name,city\nAna,Madrid\n", "no phone column"),
    (b"phone,phone\n+34600000001,+34600000002\n", "twice"), (b"phone,,x\n", "no name"),
    (b"phone\n+346\x0000001\n", "NUL"), (codecs.BOM_UTF8 + b"phone\n\xff\xfe\n", "utf-8"),
    (("," .join(f"c{i}" for i in range(60)) + ",phone\n").encode(), "columns"),
])
def test_files_that_cannot_be_read_are_refused(data: bytes, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_csv(data)
    assert caught.value.code == "csv_invalid" and says in caught.value.message


def test_the_row_count_is_bounded() -> None:
    data = "phone\n" + "".join(f"+3460000{i:04d}\n" for i in range(11))
    assert len(parse_csv(data.encode(), max_rows=11).rows) == 11
    with pytest.raises(InvalidInput, match="more than 10 rows"):
        parse_csv(data.encode(), max_rows=10)


def test_huge_fields_are_reported_or_refused() -> None:
    parsed = parse_csv(f"phone,note\n+34600000001,{'x' * (MAX_CELL + 1)}\n+34600000002,ok\n".encode())
    assert [(p.line, p.column) for p in parsed.invalid] == [(2, "note")]
    assert len(parsed.rows) == 1
    with pytest.raises(InvalidInput, match="line 2"):  # beyond the csv module's field limit
        parse_csv(f'phone,note\n+34600000001,"{"y" * 200_000}"\n'.encode())


CELL = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["=cmd|' /C calc'!A0", "+34 600 000 001", "0034600000002", "600000003", "\ufeff", '"', '""',
                     "\r", "\n", ";", ",", "\t", "+1 (212) 555-0101", "Europe/Madrid", "America/Bogota", "x" * 1500]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(CELL, min_size=1, max_size=5), max_size=12),
       st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1"]), st.sampled_from([",", ";", "\t"]),
       st.booleans())
def test_fuzz_hostile_files_are_refused_or_fully_accounted_for(rows: list[list[str]], encoding: str, sep: str,
                                                               quote: bool) -> None:
    def cell(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if quote else value

    text = sep.join(["phone", "name", "timezone", "note"]) + "\n" + "".join(
        sep.join(cell(c) for c in row) + "\n" for row in rows)
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        data = text.encode("utf-8", errors="surrogatepass")
    try:
        parsed = parse_csv(data, country_code="34")
    except InvalidInput as exc:
        assert exc.code == "csv_invalid"
        return
    lines_with_data = parsed.data_rows
    assert lines_with_data == len(parsed.rows) + len(parsed.invalid) + len(parsed.duplicates)
    phones = [r.phone for r in parsed.rows]
    assert len(phones) == len(set(phones))
    for row in parsed.rows:
        assert row.phone.startswith("+") and row.phone[1:].isdigit() and 8 <= len(row.phone) - 1 <= 15
        assert all(len(v) <= MAX_CELL for v in row.variables.values())
        assert set(row.variables) <= {"note"} | set(parsed.columns)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        parsed = parse_csv(b"phone,x\n" + data, country_code="34")
    except InvalidInput as exc:
        assert exc.code == "csv_invalid"
    else:
        assert parsed.data_rows == len(parsed.rows) + len(parsed.invalid) + len(parsed.duplicates)
