"""Agent, route and contact CRUD on real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from models import Agent, Contact, Conversation, KnowledgeDocument
from models.db import session_scope
from voicebot.agent.store import AgentStore
from voicebot.errors import Conflict, InvalidInput, NotFound


@pytest.fixture
def store(engine: Engine) -> AgentStore:
    return AgentStore(engine)


async def test_agent_crud(store: AgentStore) -> None:
    created = await store.create_agent({"name": "sales", "persona": "You sell bikes.", "max_tokens": 80})
    assert created.id is not None and created.temperature == 0.3 and created.active
    assert (await store.get_agent(created.id)).persona == "You sell bikes."
    assert (await store.get_agent_by_name("sales")).id == created.id
    await store.create_agent({"name": "support", "active": False})
    assert [a.name for a in await store.list_agents()] == ["sales", "support"]
    assert [a.name for a in await store.list_agents(active_only=True)] == ["sales"]
    updated = await store.update_agent(created.id, {"name": "sales-2", "temperature": 0.0, "active": False})
    assert (updated.name, updated.temperature, updated.active) == ("sales-2", 0.0, False)
    assert updated.updated_at >= created.updated_at
    assert (await store.get_agent(created.id)).name == "sales-2"
    await store.delete_agent(created.id)
    with pytest.raises(NotFound) as info:
        await store.get_agent(created.id)
    assert info.value.field == "agent_id"


@pytest.mark.parametrize(("data", "field"), [
    ({"persona": "no name"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "x" * 81}, "name"),
    ({"name": "ok", "temperature": 2.5}, "temperature"),
    ({"name": "ok", "max_tokens": 0}, "max_tokens"),
    ({"name": "ok", "greeting": "x" * 2001}, "greeting"),
    ({"name": "ok", "id": 5}, "id"),
    ({"name": "ok", "colour": "red"}, "colour"),
])
async def test_invalid_agents_are_rejected_with_the_field(store: AgentStore, data: dict[str, object],
                                                          field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        await store.create_agent(data)
    assert info.value.field == field
    assert await store.list_agents() == []


async def test_duplicate_names_conflict(store: AgentStore) -> None:
    first = await store.create_agent({"name": "one"})
    await store.create_agent({"name": "two"})
    with pytest.raises(Conflict) as info:
        await store.create_agent({"name": "one"})
    assert info.value.field == "name" and info.value.http_status == 409
    assert first.id is not None
    with pytest.raises(Conflict):
        await store.update_agent(first.id, {"name": "two"})
    with pytest.raises(InvalidInput) as bad:
        await store.update_agent(first.id, {"temperature": -1})
    assert bad.value.field == "temperature"
    assert (await store.get_agent(first.id)).temperature == 0.3  # nothing half-applied
    with pytest.raises(NotFound):
        await store.update_agent(999, {"persona": "x"})
    with pytest.raises(NotFound):
        await store.get_agent_by_name("three")


async def test_delete_refused_while_routes_or_knowledge_use_the_agent(store: AgentStore,
                                                                      engine: Engine) -> None:
    agent = await store.create_agent({"name": "busy"})
    assert agent.id is not None
    route = await store.create_route({"did": "200", "agent_id": agent.id})
    with pytest.raises(Conflict) as info:
        await store.delete_agent(agent.id)
    assert info.value.field == "routes"
    assert route.id is not None
    await store.delete_route(route.id)
    with session_scope(engine) as session:
        session.add(KnowledgeDocument(agent_id=agent.id, title="doc", status="ready"))
        session.add(Conversation(channel="voice", agent_id=agent.id))
    with pytest.raises(Conflict) as info:
        await store.delete_agent(agent.id)
    assert info.value.field == "knowledge"
    with session_scope(engine) as session:
        for doc in session.exec(select(KnowledgeDocument)).all():
            session.delete(doc)
    await store.delete_agent(agent.id)
    with session_scope(engine) as session:  # history is kept, detached from the deleted agent
        conversations = session.exec(select(Conversation)).all()
        assert len(conversations) == 1 and conversations[0].agent_id is None


async def test_route_crud_and_resolution(store: AgentStore) -> None:
    agent = await store.create_agent({"name": "front-desk"})
    other = await store.create_agent({"name": "night"})
    assert agent.id is not None and other.id is not None
    route = await store.create_route({"did": "+4930123456", "agent_id": agent.id, "description": "main"})
    assert route.id is not None and route.enabled
    assert (await store.get_route_by_did("+4930123456")).id == route.id
    assert (await store.agent_for_did("+4930123456")).name == "front-desk"  # type: ignore[union-attr]
    assert await store.agent_for_did("999") is None
    await store.update_route(route.id, {"agent_id": other.id})
    assert (await store.agent_for_did("+4930123456")).name == "night"  # type: ignore[union-attr]
    await store.update_agent(other.id, {"active": False})
    assert await store.agent_for_did("+4930123456") is None  # inactive agents answer nothing
    await store.update_agent(other.id, {"active": True})
    await store.update_route(route.id, {"enabled": False})
    assert await store.agent_for_did("+4930123456") is None
    flow_route = await store.create_route({"did": "300", "flow_id": 7})
    assert await store.agent_for_did("300") is None
    assert [r.did for r in await store.list_routes()] == ["+4930123456", "300"]
    assert flow_route.id is not None
    await store.delete_route(flow_route.id)
    with pytest.raises(NotFound):
        await store.get_route(flow_route.id)
    with pytest.raises(NotFound):
        await store.delete_route(flow_route.id)


@pytest.mark.parametrize(("data", "error", "field"), [
    ({"did": "100"}, InvalidInput, "agent_id"),
    ({"did": "100", "agent_id": 12345}, InvalidInput, "agent_id"),
    ({"did": "100", "agent_id": "1"}, InvalidInput, "agent_id"),
    ({"did": "bad did!", "flow_id": 1}, InvalidInput, "did"),
    ({"did": "", "flow_id": 1}, InvalidInput, "did"),
    ({"flow_id": 1}, InvalidInput, "did"),
    ({"did": "100", "flow_id": 1, "extra": 1}, InvalidInput, "extra"),
])
async def test_invalid_routes(store: AgentStore, data: dict[str, object], error: type[Exception],
                              field: str) -> None:
    with pytest.raises(error) as info:
        await store.create_route(data)
    assert getattr(info.value, "field", None) == field
    assert await store.list_routes() == []


async def test_route_conflicts_and_both_targets(store: AgentStore) -> None:
    agent = await store.create_agent({"name": "a"})
    assert agent.id is not None
    await store.create_route({"did": "100", "agent_id": agent.id})
    second = await store.create_route({"did": "101", "agent_id": agent.id})
    with pytest.raises(Conflict) as info:
        await store.create_route({"did": "100", "flow_id": 3})
    assert info.value.field == "did"
    assert second.id is not None
    with pytest.raises(Conflict):
        await store.update_route(second.id, {"did": "100"})
    with pytest.raises(InvalidInput) as both:
        await store.update_route(second.id, {"flow_id": 2})
    assert both.value.field == "flow_id"


async def test_one_person_is_one_contact_across_channels(store: AgentStore) -> None:
    caller = await store.find_or_create_contact(phone="+1 (555) 010-2030", name="Ada", verified=True)
    assert caller.phone == "+15550102030"
    assert (await store.find_or_create_contact(phone="+15550102030")).id == caller.id
    assert (await store.find_or_create_contact(phone="0015550102030")).id == caller.id
    # WhatsApp ids are the international number in digits: the same person, when the channel vouches for it.
    on_whatsapp = await store.find_or_create_contact(whatsapp_id="15550102030", verified=True)
    assert on_whatsapp.id == caller.id and on_whatsapp.whatsapp_id == "15550102030"
    # An e-mail given together with a known number joins that contact.
    with_email = await store.find_or_create_contact(phone="+15550102030", email="Ada@Example.ORG")
    assert with_email.id == caller.id and with_email.email == "ada@example.org"
    assert (await store.find_or_create_contact(email="ada@example.org")).id == caller.id
    assert (await store.get_contact(caller.id or 0)).name == "Ada"
    stranger = await store.find_or_create_contact(email="bob@example.org")
    assert stranger.id != caller.id
    # WhatsApp-first contacts are found again when they call from a verified number, never from a bare
    # (spoofable) caller ID.
    first_on_whatsapp = await store.find_or_create_contact(whatsapp_id="+44 7700 900123", verified=True)
    assert (await store.find_or_create_contact(phone="+447700900123", verified=True)).id == first_on_whatsapp.id
    other_on_whatsapp = await store.find_or_create_contact(whatsapp_id="4915112345678", verified=True)
    spoofed = await store.find_or_create_contact(phone="+4915112345678")
    assert spoofed.id != other_on_whatsapp.id and spoofed.whatsapp_id is None


async def test_identifiers_held_by_someone_else_are_not_stolen(store: AgentStore, engine: Engine) -> None:
    bob = await store.find_or_create_contact(email="bob@example.org")
    ann = await store.find_or_create_contact(phone="+15550000001")
    found = await store.find_or_create_contact(phone="+15550000001", email="bob@example.org")
    assert found.id == ann.id and found.email is None  # phone wins; Bob keeps his address
    with session_scope(engine) as session:
        assert session.get(Contact, bob.id).email == "bob@example.org"  # type: ignore[union-attr]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({}, "phone"),
    ({"phone": "call me"}, "phone"),
    ({"phone": "+"}, "phone"),
    ({"whatsapp_id": "abc"}, "whatsapp_id"),
    ({"email": "not-an-address"}, "email"),
    ({"phone": "+15550000002", "name": "x" * 201}, "name"),
])
async def test_invalid_contacts(store: AgentStore, kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        await store.find_or_create_contact(phone=kwargs.get("phone"), whatsapp_id=kwargs.get("whatsapp_id"),
                                           email=kwargs.get("email"), name=kwargs.get("name", ""))
    assert info.value.field == field
    with pytest.raises(NotFound):
        await store.get_contact(1)


async def test_concurrent_first_contacts_create_one_row(store: AgentStore, engine: Engine) -> None:
    results = await asyncio.gather(*(store.find_or_create_contact(phone="+15559990000") for _ in range(6)))
    assert len({c.id for c in results}) == 1
    with session_scope(engine) as session:
        assert len(session.exec(select(Contact)).all()) == 1


async def test_rows_returned_are_usable_after_the_session(store: AgentStore) -> None:
    agent = await store.create_agent({"name": "detached"})
    assert isinstance(agent, Agent) and agent.name == "detached" and agent.greeting
