"""The fuzzy "was this phrase heard" check used on call recordings accepts Whisper's spellings, and nothing else."""
from __future__ import annotations

import pytest

from tests.voice.conftest import heard_phrase


@pytest.mark.parametrize("heard", [
    "hello, this is eva from cennyside bike shop. how can i help you?",  # heard in a CI run
    "hello this is eva from sunny side bike shop",
    "welcome to sonny side bike shop",
])
def test_whispers_spellings_of_the_greeting_are_accepted(heard: str) -> None:
    assert heard_phrase(heard, "sunnyside bike shop", 0.7)


@pytest.mark.parametrize("heard", [
    "hello this is eva from the grocery store how can i help you",
    "",
    "bike",
    "please hold while i transfer you",
])
def test_a_phrase_that_was_not_said_is_not_heard(heard: str) -> None:
    assert not heard_phrase(heard, "sunnyside bike shop", 0.7)
    assert not heard_phrase(heard, "operator test line")
