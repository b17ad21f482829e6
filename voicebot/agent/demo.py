"""The ``demo`` agent that exists after ``eva setup``: a persona, a greeting, route ``100`` and a short
knowledge document about a fictional bike shop, so ``make run`` and ``eva chat --agent demo`` have something
to answer about.  Seeding is idempotent and never overwrites what an operator changed (an existing agent,
route or document is left as it is)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models import Agent, KnowledgeDocument
from models.db import session_scope
from voicebot.agent import store
from voicebot.config import Settings
from voicebot.errors import NotFound

log = logging.getLogger(__name__)

DEMO_AGENT = "demo"
DEMO_DID = "100"
DEMO_DOCUMENT = Path(__file__).resolve().parent / "demo_knowledge.md"
DEMO_TITLE = "Sunny Side Bike Shop facts"
DEMO_FIELDS = {
    "name": DEMO_AGENT,
    "description": "Demo agent: the phone assistant of a fictional bike shop.",
    "persona": "You are Eva, the friendly phone assistant of Sunny Side Bike Shop. Answer briefly.",
    "greeting": "Hello, this is Eva from Sunny Side Bike Shop. How can I help you?",
    "temperature": 0.2,
    "max_tokens": 96,
    # "Put me through to a person" reaches the packaged dialplan's operator test line (extension 800).
    "transfer_targets": {"front desk": "800"},
}


def _demo_agent(session: Session) -> Agent | None:
    return session.exec(select(Agent).where(Agent.name == DEMO_AGENT)).first()


def _ready_document(session: Session, agent_id: int) -> KnowledgeDocument | None:
    return session.exec(select(KnowledgeDocument).where(KnowledgeDocument.agent_id == agent_id,
                                                        KnowledgeDocument.filename == DEMO_DOCUMENT.name,
                                                        KnowledgeDocument.status == "ready")).first()


def demo_seeded(engine: Engine) -> bool:
    """True when the demo agent, its route and its ready knowledge document all exist."""
    if not inspect(engine).has_table(Agent.__tablename__):  # schema not created yet
        return False
    with session_scope(engine) as session:
        agent = _demo_agent(session)
        if agent is None or agent.id is None:
            return False
        try:
            store.get_route_by_did(session, DEMO_DID)
        except NotFound:
            return False
        return _ready_document(session, agent.id) is not None


def seed_demo_rows(engine: Engine) -> int:
    """Create the demo agent and route ``100`` when missing; returns the agent id."""
    with session_scope(engine) as session:
        agent = _demo_agent(session) or store.create_agent(session, DEMO_FIELDS)
        assert agent.id is not None
        try:
            store.get_route_by_did(session, DEMO_DID)
        except NotFound:
            store.create_route(session, {"did": DEMO_DID, "agent_id": agent.id,
                                         "description": "demo agent (created by eva setup)"})
        return agent.id


async def seed_demo_knowledge(settings: Settings, engine: Engine, agent_id: int) -> None:
    """Ingest the sample document for the demo agent unless a ready copy exists (a failed or half-done
    earlier attempt is removed first).  Waits until indexing has finished."""
    from rag import KnowledgeBase

    kb = KnowledgeBase(settings, engine)
    try:
        def existing(session: Session) -> list[KnowledgeDocument]:
            return list(session.exec(select(KnowledgeDocument).where(
                KnowledgeDocument.agent_id == agent_id,
                KnowledgeDocument.filename == DEMO_DOCUMENT.name)).all())

        def load() -> list[KnowledgeDocument]:
            with session_scope(engine) as session:
                return existing(session)

        documents = await asyncio.to_thread(load)
        if any(d.status == "ready" for d in documents):
            return
        for document in documents:
            assert document.id is not None
            await kb.delete_document(document.id)
        document = await kb.ingest_file(agent_id, DEMO_DOCUMENT, title=DEMO_TITLE,
                                        description="Sample knowledge of the demo agent")
        await kb.wait_idle()
        assert document.id is not None
        final = await kb.get_document(document.id)
        if final.status != "ready":
            from voicebot.errors import SetupError

            raise SetupError(f"the demo document could not be indexed: {final.error}")
        log.info("demo knowledge indexed: %d chunks", final.chunk_count)
    finally:
        await kb.close()


def seed_demo(settings: Settings, engine: Engine) -> int:
    """Blocking: agent, route and knowledge (for ``eva setup``).  Returns the demo agent's id."""
    agent_id = seed_demo_rows(engine)
    asyncio.run(seed_demo_knowledge(settings, engine, agent_id))
    return agent_id
