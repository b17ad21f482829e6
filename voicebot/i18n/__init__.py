"""Eva's fixed phrases, per language: one JSON catalog per language beside this module (``en.json``, ``es.json``).

Everything Eva says or writes on its own (not the model, not the agent's configured texts): "Sorry, I didn't
catch that", the offer to put the caller through, the grounding instruction the model reads, the channel
guidance, the WhatsApp "text only" reply...  Adding a language is adding a file with every key of ``en.json``
(``tests/unit/test_i18n.py`` fails on a missing key or a placeholder that differs).

:func:`phrase` takes a BCP-47 tag: ``es-MX`` uses ``es-mx.json`` if there is one, else ``es.json``, else English.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

MESSAGES_DIR = Path(__file__).parent
DEFAULT_LANGUAGE = "en"


def normalise(tag: str) -> str:
    """``es_ES`` / ``ES-es`` -> ``es-es``; '' -> the default language."""
    return (tag or DEFAULT_LANGUAGE).replace("_", "-").strip().lower() or DEFAULT_LANGUAGE


def base_language(tag: str) -> str:
    return normalise(tag).split("-")[0]


@cache
def catalog(name: str) -> dict[str, str]:
    """The catalog file ``<name>.json`` ({} when there is none)."""
    path = MESSAGES_DIR / f"{name}.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items() if not str(k).startswith("_")}


def languages() -> list[str]:
    """The languages with a catalog (file names), English first."""
    names = sorted(p.stem for p in MESSAGES_DIR.glob("*.json"))
    return sorted(names, key=lambda n: n != DEFAULT_LANGUAGE)


def supported(tag: str) -> bool:
    """Whether Eva has its fixed phrases in this language (else it falls back to English)."""
    tag = normalise(tag)
    return bool(catalog(tag) or catalog(base_language(tag)))


def phrase(key: str, language: str = DEFAULT_LANGUAGE, **values: str) -> str:
    """The phrase ``key`` in ``language`` (falling back to the base language, then English), with ``{name}``
    placeholders filled from ``values``.  An unknown key is a programming error: KeyError."""
    tag = normalise(language)
    for name in (tag, base_language(tag), DEFAULT_LANGUAGE):
        text = catalog(name).get(key)
        if text is not None:
            return text.format(**values) if values else text
    raise KeyError(f"no phrase {key!r} in the message catalog")
