"""Fixtures of the knowledge-base tests: the real embedding model (loaded once), SQLite and PostgreSQL engines
with the real migrations, and a ``KnowledgeBase`` over a private data directory with an embedded Chroma."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from models import Agent
from models.db import make_engine, session_scope, upgrade
from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from voicebot.config import Settings


@pytest.fixture(scope="session")
def local_embedder() -> LocalEmbedder:
    """all-MiniLM-L6-v2 from its package; the model itself is cached per process."""
    return LocalEmbedder()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database: SQLite file or a fresh database on the session's real PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'eva.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    db = make_engine(url)
    upgrade(db)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    db = make_engine(f"sqlite:///{tmp_path / 'eva.db'}")
    upgrade(db)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def kb_settings(tmp_path: Path) -> Settings:
    return Settings.load({}).with_(data_dir=tmp_path / "data", chunk_size=400, chunk_overlap=60,
                                   max_upload_mb=1)


AgentFactory = Callable[[str], int]


def agent_factory(db: Engine) -> AgentFactory:
    def create(name: str) -> int:
        with session_scope(db) as session:
            agent = Agent(name=name)
            session.add(agent)
            session.flush()
            assert agent.id is not None
            return agent.id

    return create


@pytest.fixture
def make_agent(engine: Engine) -> AgentFactory:
    return agent_factory(engine)


@pytest.fixture
async def kb(kb_settings: Settings, engine: Engine,
             local_embedder: LocalEmbedder) -> AsyncIterator[KnowledgeBase]:
    knowledge = KnowledgeBase(kb_settings, engine, embedder=local_embedder)
    try:
        yield knowledge
    finally:
        await knowledge.close()
