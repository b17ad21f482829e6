"""Fixtures of the LLM tests."""

from __future__ import annotations

import pytest

from tests.embedded_model import shared_embedded_llm
from voicebot.llm.embedded import EmbeddedLLM


@pytest.fixture(scope="session")
def embedded_llm() -> EmbeddedLLM:
    """The real embedded model, loaded once per session."""
    return shared_embedded_llm()
