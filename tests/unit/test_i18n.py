"""The message catalog: every language has every English key with the same placeholders, and lookups fall back
from a regional tag to its language, then to English."""

from __future__ import annotations

import json
import string

import pytest

from voicebot.i18n import MESSAGES_DIR, catalog, languages, phrase, supported


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_english_and_spanish_catalogs_exist() -> None:
    assert languages()[:1] == ["en"] and "es" in languages()


@pytest.mark.parametrize("language", [p.stem for p in sorted(MESSAGES_DIR.glob("*.json"))])
def test_every_catalog_has_every_key_with_the_same_placeholders(language: str) -> None:
    reference, other = catalog("en"), catalog(language)
    assert set(reference) - set(other) == set(), f"{language}.json misses keys"
    assert set(other) - set(reference) == set(), f"{language}.json has keys English does not"
    for key, text in reference.items():
        assert _placeholders(other[key]) == _placeholders(text), (language, key)
        if text:  # "" only where a language needs nothing (English needs no "answer in English" rule)
            assert other[key].strip(), (language, key)


def test_catalog_files_are_valid_json_objects_of_strings() -> None:
    for path in MESSAGES_DIR.glob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict) and all(isinstance(v, str) for v in data.values()), path.name


def test_lookup_falls_back_from_region_to_language_to_english() -> None:
    assert phrase("not_heard", "es") == catalog("es")["not_heard"]
    assert phrase("not_heard", "es-MX") == catalog("es")["not_heard"]  # no es-mx.json: the base language
    assert phrase("not_heard", "es_ES") == catalog("es")["not_heard"]
    assert phrase("not_heard", "de") == catalog("en")["not_heard"]  # no German catalog: English
    assert phrase("not_heard", "") == catalog("en")["not_heard"]
    assert supported("es-419") and not supported("de")


def test_placeholders_are_filled_and_unknown_keys_fail_loudly() -> None:
    assert phrase("transfer_now", "es", target="recepción") == "De acuerdo, le paso ahora con recepción."
    assert "front desk" in phrase("transfer_now", "en", target="front desk")
    with pytest.raises(KeyError):
        phrase("no_such_key", "es")
