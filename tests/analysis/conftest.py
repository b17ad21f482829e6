"""Fixtures of the analysis tests: a migrated database (SQLite, then a real PostgreSQL; or SQLite alone) and the
default model."""

from __future__ import annotations

import pytest

from tests.agent.conftest import engine  # noqa: F401 - shared fixture: SQLite, then a real PostgreSQL
from tests.embedded_model import shared_qwen_llm
from tests.rag.conftest import sqlite_engine  # noqa: F401 - shared fixture: a migrated SQLite file
from voicebot.llm.embedded import EmbeddedLLM


@pytest.fixture(scope="module")
def qwen() -> EmbeddedLLM:
    """The default embedded model (Qwen2.5 0.5B), loaded once per test process."""
    return shared_qwen_llm()
