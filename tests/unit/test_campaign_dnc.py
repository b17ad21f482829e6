"""The opt-out detector (English and Spanish, with near misses that must not opt anyone out) and the pure
do-not-call lookup."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.campaigns.dnc import DncList, asks_not_to_be_contacted, is_blocked

OPT_OUTS = [
    ("Stop calling me!", "en"), ("please stop calling me", "en"), ("STOP", "en"), ("stop.", "en"), ("Stop", "es"),
    ("unsubscribe", "en"), ("UNSUBSCRIBE", "es"), ("Please remove me from your list", "en"),
    ("take me off your calling list", "en"), ("Remove my number from your database.", "en"),
    ("Don't call me again", "en"), ("do not contact me anymore", "en"), ("never call this number again", "en"),
    ("I want to opt out", "en"), ("Put me on your do not call list", "en"), ("how do I unsubscribe?", "en"),
    ("No. Stop calling me.", "en"), ("stop texting me", "en"), ("STOP ALL", "en"), ("Leave me alone", "en"),
    ("No me llames más", "es"), ("no me llames", "es"), ("No me llamen nunca", "es-MX"), ("Deja de llamarme", "es"),
    ("Dejen de llamarme, por favor", "es"), ("Quiero darme de baja", "es"), ("dame de baja", "es"),
    ("No, dame de baja", "es"), ("BAJA", "es"), ("Bórrenme de su lista", "es"), ("sácame de tu lista", "es"),
    ("no vuelvas a llamarme", "es"), ("No quiero recibir más llamadas", "es"),
]
NOT_OPT_OUTS = [
    ("don't stop", "en"), ("I can't stop laughing", "en"), ("Don't stop calling me, I love these updates", "en"),
    ("stop the music", "en"), ("the bus stop is near", "en"), ("I don't want to unsubscribe", "en"),
    ("please don't remove me from your list", "en"), ("call me tomorrow", "en"), ("Can you call me back?", "en"),
    ("Yes, I'd like to book", "en"), ("cancel my appointment", "en"), ("stop by the shop", "en"),
    ("no me llames tan temprano", "es"), ("no quiero darme de baja", "es"), ("Llámame mañana", "es"),
    ("no pares", "es"), ("", "en"), ("   ", "es"), ("end of the month works", "en"),
]


@pytest.mark.parametrize(("text", "language"), OPT_OUTS)
def test_opt_outs_are_recognised(text: str, language: str) -> None:
    assert asks_not_to_be_contacted(text, language), text


@pytest.mark.parametrize(("text", "language"), NOT_OPT_OUTS)
def test_near_misses_are_not_opt_outs(text: str, language: str) -> None:
    assert not asks_not_to_be_contacted(text, language), text


def test_languages_checked() -> None:
    # The campaign's language and English; an unknown language checks every language known.
    assert asks_not_to_be_contacted("please stop calling me", "es")
    assert not asks_not_to_be_contacted("no me llames más", "en")
    assert asks_not_to_be_contacted("no me llames más", "xx")
    assert asks_not_to_be_contacted("STOP", "de")


def test_only_the_start_of_a_long_message_is_read() -> None:
    assert not asks_not_to_be_contacted("a" * 5000 + " stop calling me", "en")
    assert asks_not_to_be_contacted("stop calling me " + "a" * 5000, "en")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["en", "es", "es-MX", "pt", ""]))
def test_the_detector_never_fails(text: str, language: str) -> None:
    assert asks_not_to_be_contacted(text, language) in (True, False)


def test_the_dnc_list_is_global_or_per_campaign() -> None:
    dnc = DncList.of([("+34600000001", None), ("+34600000002", 7)])
    assert is_blocked(dnc, "+34600000001") and is_blocked(dnc, "+34600000001", 3)
    assert is_blocked(dnc, "+34600000002", 7)
    assert not is_blocked(dnc, "+34600000002", 8) and not is_blocked(dnc, "+34600000002")
    assert not is_blocked(dnc, "+34600000003", 7)
