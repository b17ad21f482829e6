"""The ``demo`` agent that exists after ``eva setup``: a persona, a greeting, route ``100`` and a short
knowledge document about a fictional bike shop, so ``make run`` and ``eva chat --agent demo`` have something
to answer about; its Spanish twin ``demo-es`` (a bike shop in Valencia) on route ``101``; beside them the example
flows (``voicebot/flows/examples``: the DTMF + speech main menu on
route ``200``, lead qualification for WhatsApp/e-mail), answered by the demo agent.  Seeding is idempotent and
never overwrites what an operator changed (an existing agent, route, flow or document is left as it is, even
if a designer edited it)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models import Agent, Flow, KnowledgeDocument
from models.db import session_scope
from voicebot.agent import store
from voicebot.config import Settings
from voicebot.errors import NotFound
from voicebot.flows.spec import check_flow, parse_flow

log = logging.getLogger(__name__)

DEMO_AGENT = "demo"
DEMO_DID = "100"
DEMO_DOCUMENT = Path(__file__).resolve().parent / "demo_knowledge.md"
DEMO_TITLE = "Sunny Side Bike Shop facts"
EXAMPLE_FLOWS = Path(__file__).resolve().parent.parent / "flows" / "examples"
SPANISH_AGENT = "demo-es"
SPANISH_DID = "101"
SPANISH_DOCUMENT = Path(__file__).resolve().parent / "demo_knowledge_es.md"
SPANISH_TITLE = "Datos de Bicicletas Sol"
SPANISH_FIELDS = {
    "name": SPANISH_AGENT,
    "description": "Agente de demostración en español: la asistente telefónica de una tienda de bicicletas.",
    "persona": "Eres Eva, la amable asistente telefónica de Bicicletas Sol. Responde en español y con brevedad.",
    "greeting": "Hola, soy Eva, de Bicicletas Sol. ¿En qué puedo ayudarle?",
    "fallback_message": "Lo siento, ahora mismo tengo problemas para responder. ¿Puede repetirlo?",
    "language": "es",
    "temperature": 0.2,
    "max_tokens": 96,
    "transfer_targets": {"recepción": "800"},
}
MENU_FLOW = "main-menu"
MENU_DID = "200"
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


def _demo_agent(session: Session, name: str = DEMO_AGENT) -> Agent | None:
    return session.exec(select(Agent).where(Agent.name == name)).first()


def _ready_document(session: Session, agent_id: int, document: Path = DEMO_DOCUMENT) -> KnowledgeDocument | None:
    return session.exec(select(KnowledgeDocument).where(KnowledgeDocument.agent_id == agent_id,
                                                        KnowledgeDocument.filename == document.name,
                                                        KnowledgeDocument.status == "ready")).first()


def demo_seeded(engine: Engine) -> bool:
    """True when the demo agents, their routes and their ready knowledge documents all exist."""
    if not inspect(engine).has_table(Agent.__tablename__):  # schema not created yet
        return False
    with session_scope(engine) as session:
        for name, document in ((DEMO_AGENT, DEMO_DOCUMENT), (SPANISH_AGENT, SPANISH_DOCUMENT)):
            agent = _demo_agent(session, name)
            if agent is None or agent.id is None or _ready_document(session, agent.id, document) is None:
                return False
        try:
            store.get_route_by_did(session, DEMO_DID)
            store.get_route_by_did(session, SPANISH_DID)
            store.get_route_by_did(session, MENU_DID)
        except NotFound:
            return False
        names = set(session.exec(select(Flow.name)).all())
        return all(json.loads(p.read_text())["name"] in names for p in EXAMPLE_FLOWS.glob("*.json"))


def _seed_agent(session: Session, fields: dict[str, object], did: str, description: str) -> int:
    """A demo agent and its route, each created only when missing; returns the agent id."""
    agent = _demo_agent(session, str(fields["name"])) or store.create_agent(session, fields)
    assert agent.id is not None
    try:
        store.get_route_by_did(session, did)
    except NotFound:
        store.create_route(session, {"did": did, "agent_id": agent.id, "description": description})
    return agent.id


def seed_demo_rows(engine: Engine) -> int:
    """Create the demo agent and route ``100`` when missing; returns the agent id."""
    with session_scope(engine) as session:
        agent_id = _seed_agent(session, DEMO_FIELDS, DEMO_DID, "demo agent (created by eva setup)")
        _seed_example_flows(session, agent_id)
        return agent_id


def seed_spanish_demo_rows(engine: Engine) -> int:
    """Create the Spanish demo agent and route ``101`` when missing; returns the agent id."""
    with session_scope(engine) as session:
        return _seed_agent(session, SPANISH_FIELDS, SPANISH_DID, "Spanish demo agent (created by eva setup)")


def _seed_example_flows(session: Session, agent_id: int) -> None:
    """The example flows (answered by the demo agent) and route ``200`` -> main menu, where missing."""
    for path in sorted(EXAMPLE_FLOWS.glob("*.json")):
        data = json.loads(path.read_text())
        if session.exec(select(Flow).where(Flow.name == data["name"])).first() is not None:
            continue  # a designer's edits stay
        check_flow(parse_flow(data["start_step"], data["steps"]))
        session.add(Flow(name=data["name"], description=data.get("description", ""), agent_id=agent_id,
                         start_step=data["start_step"], steps=data["steps"]))
        session.flush()
        log.info("example flow %s created", data["name"])
    menu = session.exec(select(Flow).where(Flow.name == MENU_FLOW)).first()
    try:
        store.get_route_by_did(session, MENU_DID)
    except NotFound:
        if menu is not None:
            store.create_route(session, {"did": MENU_DID, "flow_id": menu.id,
                                         "description": "example main menu flow (created by eva setup)"})


async def seed_demo_knowledge(settings: Settings, engine: Engine, agent_id: int, *,
                              document_path: Path = DEMO_DOCUMENT, title: str = DEMO_TITLE) -> None:
    """Ingest a sample document (the demo agent's by default) unless a ready copy exists (a failed or half-done
    earlier attempt is removed first).  Waits until indexing has finished."""
    from rag import KnowledgeBase

    kb = KnowledgeBase(settings, engine)
    try:
        def existing(session: Session) -> list[KnowledgeDocument]:
            return list(session.exec(select(KnowledgeDocument).where(
                KnowledgeDocument.agent_id == agent_id,
                KnowledgeDocument.filename == document_path.name)).all())

        def load() -> list[KnowledgeDocument]:
            with session_scope(engine) as session:
                return existing(session)

        documents = await asyncio.to_thread(load)
        if any(d.status == "ready" for d in documents):
            return
        for document in documents:
            assert document.id is not None
            await kb.delete_document(document.id)
        document = await kb.ingest_file(agent_id, document_path, title=title,
                                        description="Sample knowledge of a demo agent")
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
    """Blocking: agents, routes and knowledge (for ``eva setup``).  Returns the (English) demo agent's id."""
    agent_id = seed_demo_rows(engine)
    spanish_id = seed_spanish_demo_rows(engine)

    async def both() -> None:
        await seed_demo_knowledge(settings, engine, agent_id)
        await seed_demo_knowledge(settings, engine, spanish_id, document_path=SPANISH_DOCUMENT, title=SPANISH_TITLE)

    asyncio.run(both())
    return agent_id
