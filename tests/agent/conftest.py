"""Fixtures of the agent tests: a real embedded LLM, a seeded demo world (SQLite + Chroma + the demo
document ingested through the real knowledge base), and engines on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from models.db import make_engine, upgrade
from rag import KnowledgeBase
from tests.embedded_model import gguf_path, shared_embedded_llm
from voicebot.config import Settings
from voicebot.llm.embedded import EmbeddedLLM


@pytest.fixture(scope="session")
def embedded_llm() -> EmbeddedLLM:
    return shared_embedded_llm()


@dataclass(frozen=True)
class DemoWorld:
    settings: Settings
    demo_agent_id: int


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWorld]:
    """A data directory where `eva setup`'s schema and demo steps have run (real rag ingestion)."""
    from voicebot.agent.demo import seed_demo

    data = tmp_path_factory.mktemp("eva-agent-data")
    settings = Settings().with_(data_dir=data, llm="embedded", llm_model_path=str(gguf_path()))
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    agent_id = seed_demo(settings, engine)
    engine.dispose()
    yield DemoWorld(settings, agent_id)


@pytest.fixture
def demo_engine(demo_world: DemoWorld) -> Iterator[Engine]:
    engine = make_engine(demo_world.settings.effective_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
async def knowledge(demo_world: DemoWorld, demo_engine: Engine) -> AsyncIterator[KnowledgeBase]:
    kb = KnowledgeBase(demo_world.settings, demo_engine)
    yield kb
    await kb.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh, migrated database: SQLite file, then a real PostgreSQL database."""
    url = f"sqlite:///{tmp_path / 'eva.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    db = make_engine(url)
    upgrade(db)
    yield db
    db.dispose()
