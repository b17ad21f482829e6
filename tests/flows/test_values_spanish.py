"""A Spanish agent's flow understands Spanish answers as Whisper writes them: numbers, dates, yes/no, digits,
e-mail addresses and menu choices; an English flow is not confused by the Spanish words that are English words too
("once", "dos", "may") (pure functions, no model)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from voicebot.flows.spec import Collect
from voicebot.flows.values import parse, parse_date, spoken_digits, spoken_email, spoken_number, yes_no

TODAY = date(2026, 12, 1)  # a Tuesday


@pytest.mark.parametrize(("said", "expected"), [
    ("el 5 de diciembre", "2026-12-05"), ("El cinco de diciembre.", "2026-12-05"), ("mañana", "2026-12-02"),
    ("pasado mañana", "2026-12-03"), ("hoy", "2026-12-01"), ("el martes", "2026-12-08"),
    ("el miércoles por la tarde", "2026-12-02"), ("el sábado", "2026-12-05"), ("treinta y uno de enero", "2027-01-31"),
    ("el primero de marzo", "2027-03-01"), ("15 de mayo", "2027-05-15"), ("mañana por la mañana", "2026-12-02"),
])
def test_spanish_dates(said: str, expected: str) -> None:
    found = parse_date(said, TODAY, "es")
    assert found is not None and found.isoformat() == expected, said


@pytest.mark.parametrize("said", ["a las diez de la mañana", "el mar está bonito", "treinta y dos de enero",
                                  "esta mañana"])
def test_what_is_not_a_date_in_spanish(said: str) -> None:
    assert parse_date(said, TODAY, "es") is None, said


@pytest.mark.parametrize(("said", "expected"), [
    ("treinta y cinco", 35), ("ciento cinco", 105), ("dos mil veintiséis", 2026), ("quinientos", 500),
    ("somos cuatro personas", 4), ("veintitrés", 23), ("cien", 100), ("dieciocho", 18),
])
def test_spanish_numbers(said: str, expected: int) -> None:
    assert spoken_number(said, "es") == expected, said


def test_spanish_digits_yes_no_and_email() -> None:
    assert spoken_digits("cinco cinco cinco, uno dos tres cuatro", "es") == "5551234"
    assert spoken_digits("seis cero cero, treinta y cinco, veinte, doce", "es") == "600352012"  # said in pairs
    assert yes_no("Sí, claro.", None) == "yes" and yes_no("Vale", None) == "yes"
    assert yes_no("No, gracias.", None) == "no" and yes_no("Nunca", None) == "no"
    assert spoken_email("juan punto pérez arroba ejemplo punto com") is None  # an accent is no e-mail address
    assert spoken_email("Mi correo es juan punto perez arroba ejemplo punto com") == "juan.perez@ejemplo.com"


def test_spanish_menu_choices_by_word_and_by_key_name() -> None:
    menu = Collect(var="c", type="choice", choices={"horario": ["1", "horario"], "citas": ["2", "cita"]})
    assert parse(menu, "uno", today=TODAY).value == "horario"
    assert parse(menu, "La opción dos", today=TODAY).value == "citas"
    assert parse(menu, "Quiero pedir una cita", today=TODAY).value == "citas"
    assert parse(menu, "", dtmf="1", today=TODAY).value == "horario"


def test_spanish_name_lead_ins_are_dropped() -> None:
    assert parse(Collect(var="n", type="text"), "Me llamo Lucía Gómez.", today=TODAY).value == "Lucía Gómez"
    assert parse(Collect(var="n", type="text"), "Hola, soy Pedro.", today=TODAY).value == "Pedro"


def test_a_spanish_agents_flow_apologises_in_spanish_unless_the_designer_wrote_the_text() -> None:
    from voicebot.flows.engine import FlowEngine
    from voicebot.flows.spec import parse_flow
    from voicebot.i18n import phrase

    steps: list[dict[str, Any]] = [
             {"id": "cita", "say": "¿Qué día le viene bien?", "collect": {"var": "dia", "type": "date"},
              "next": "fin"},
             {"id": "hora", "say": "¿A qué hora?", "collect": {"var": "hora", "type": "number"},
              "no_match": "Diga una hora, por favor.", "next": "fin"},
             {"id": "fin", "say": "Perfecto, el {dia}.", "end": "booked"}]
    spec = parse_flow("cita", steps)
    spanish = FlowEngine(spec, "citas", language="es")
    state = spanish.start({"channel": "voice"}).state
    assert spanish.no_input(state).says()[0].startswith(phrase("flow_no_input", "es"))
    assert spanish.answer(state, "plátanos", today=TODAY).says()[0].startswith(phrase("flow_no_match", "es"))
    done = spanish.answer(state, "el cinco de diciembre", today=TODAY)
    assert done.state.ended and done.state.variables["dia"] == "2026-12-05"
    assert done.says() == ["Perfecto, el 5 de diciembre de 2026."]  # said in Spanish, stored as ISO
    english = FlowEngine(spec, "citas")
    assert english.no_input(english.start().state).says()[0].startswith("Sorry, I didn't hear anything.")
    later = parse_flow("hora", steps)
    assert FlowEngine(later, "x", language="es").answer(
        FlowEngine(later, "x", language="es").start().state, "no sé", today=TODAY).says()[0].startswith(
        "Diga una hora, por favor.")  # the designer's own text wins


@pytest.mark.parametrize(("said", "expected"), [
    ("twenty five December", None), ("thirty one December", None), ("Friday at ten may be best", "2026-12-04"),
    ("Monday around two may suit me", "2026-12-07"), ("December 5th", "2026-12-05"), ("5 December", "2026-12-05"),
])
def test_english_dates_are_not_read_with_spanish_rules(said: str, expected: str | None) -> None:
    found = parse_date(said, TODAY)
    assert (found.isoformat() if found else None) == expected, said


def test_english_numbers_ignore_spanish_words_that_are_english_too() -> None:
    assert spoken_digits("once again five five five one two three four") == "5551234"
    assert spoken_number("just once") is None
    assert spoken_number("dos") is None and spoken_number("dos", "es") == 2
    assert spoken_number("a hundred and five") == 105
