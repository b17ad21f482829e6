"""The chat channel over HTTP: sessions, whole and streamed replies (Server-Sent Events read by a real HTTP client
off a real socket), cancellation when the client leaves, memory within a session, flows, and every refusal.

The model is a local server speaking Ollama's NDJSON wire format through Eva's real Ollama backend, so a test
says exactly what the "model" writes, how slowly, and how it fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from admin_api.framework import SERVICES_KEY
from admin_api.sse import decode
from channels.chat.service import ChatService
from models import Contact, Conversation, Message
from models.db import session_scope
from tests.api.conftest import Api, offline_settings, start_api
from tests.fakes.ollama_server import ChatScript, FakeOllama
from voicebot.llm.ollama import OllamaLLM


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def chat_api(tmp_path: Path, sqlite_engine: Engine, fake: FakeOllama) -> AsyncIterator[Api]:
    settings = offline_settings(tmp_path / "data", api_cors_origins="https://shop.example")
    llm = OllamaLLM(settings, url=fake.url, model="llama3.2", timeout=5.0)
    api = await start_api(settings, sqlite_engine, offline_asterisk=True, llm=llm)
    yield api
    await api.client.close()
    await llm.close()


async def new_agent(api: Api, **fields: Any) -> int:
    status, agent = await api.call("POST", "/api/v1/agents", role="designer", json={
        "name": fields.pop("name", "shop"), "persona": "You answer questions about the Acme bike shop.", **fields})
    assert status == 201, agent
    return int(agent["id"])


async def open_session(api: Api, agent_id: int, **fields: Any) -> dict[str, Any]:
    status, session = await api.call("POST", "/api/v1/chat/sessions", role="designer",
                                     json={"agent_id": agent_id, **fields})
    assert status == 201, session
    return dict(session)


async def stream(api: Api, path: str, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, str],
                                                                                       list[tuple[str, Any]]]:
    response = await api.client.post(path, json=body, headers={**api.auth("designer"), **headers})
    raw = await response.text()
    if response.content_type == "application/json":
        return response.status, dict(response.headers), [("json", await response.json())]
    return response.status, dict(response.headers), decode(raw)


async def model_asked(fake: FakeOllama) -> None:
    """Until the model server has a chat request (it records each as it arrives; there is no event to wait on)."""
    async def asked() -> None:
        while not fake.bodies("/api/chat"):  # noqa: ASYNC110 - polling a plain list the server appends to
            await asyncio.sleep(0.02)

    await asyncio.wait_for(asked(), 10)


async def cancelled_reply(engine: Engine, session_id: int, *, within: float) -> Message:
    """The session's last message once it is stored as a cancelled reply (the core writes it after the cancel)."""
    async def stored() -> Message:
        while True:
            reply = messages_of(engine, session_id)[-1]
            if reply.timings and reply.timings.get("cancelled"):
                return reply
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(stored(), within)


def messages_of(engine: Engine, session_id: int) -> list[Message]:
    with session_scope(engine) as session:
        return list(session.exec(select(Message).where(Message.conversation_id == session_id)
                                 .order_by(col(Message.id))).all())


# ---------------------------------------------------------------------------------------------- streaming
async def test_a_reply_streams_as_events_and_is_stored(chat_api: Api, fake: FakeOllama) -> None:
    agent_id = await new_agent(chat_api)
    session = await open_session(chat_api, agent_id, external_id="visitor-7")
    assert (session["agent_id"], session["external_id"], session["messages"]) == (agent_id, "visitor-7", 0)
    fake.scripts.append(ChatScript(chunks=("We open ", "at nine ", "on weekdays.")))

    fake.scripts.appendleft(ChatScript(chunks=("Hi.",)))  # before the answer queued above
    status, headers, _ = await stream(chat_api, f"/api/v1/chat/sessions/{session['id']}/stream",
                                      {"message": "Hello"}, Origin="https://evil.example")
    assert status == 200 and "Access-Control-Allow-Origin" not in headers  # an origin not listed reads nothing
    status, headers, events = await stream(chat_api, f"/api/v1/chat/sessions/{session['id']}/stream",
                                           {"message": "When do you open?"}, Origin="https://shop.example")
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Access-Control-Allow-Origin"] == "https://shop.example"  # a widget on the site can read it
    names = [name for name, _ in events]
    assert names[0] == "session" and names[-1] == "done" and set(names[1:-1]) == {"delta"}, names
    assert "".join(data["text"] for name, data in events if name == "delta") == "We open at nine on weekdays."
    started, done = events[0][1], events[-1][1]
    assert done["reply"] == "We open at nine on weekdays." and done["message_id"] == started["assistant_message_id"]
    assert done["session_id"] == session["id"] and not done["fallback"] and done["flow"] is None
    assert done["timings"]["prompt_tokens"] == 21 and "total_ms" in done["timings"]

    stored = messages_of(chat_api.engine, session["id"])
    assert [(m.role, m.text) for m in stored][2:] == [("user", "When do you open?"),
                                                      ("assistant", "We open at nine on weekdays.")]
    assert [m.id for m in stored][2:] == [started["user_message_id"], started["assistant_message_id"]]
    status, page = await chat_api.call("GET", f"/api/v1/chat/sessions/{session['id']}/messages", role="viewer")
    assert status == 200 and [m["text"] for m in page["items"]][2:] == ["When do you open?",
                                                                        "We open at nine on weekdays."]
    status, listed = await chat_api.call("GET", f"/api/v1/chat/sessions?agent_id={agent_id}", role="viewer")
    assert status == 200 and listed["total"] == 1 and listed["items"][0]["messages"] == 4
    # The system prompt carries the chat channel's guidance; the visitor's words are the last user message.
    sent = fake.bodies("/api/chat")[-1]["messages"]
    assert sent[-1] == {"role": "user", "content": "When do you open?"}


async def test_the_session_remembers_earlier_turns(chat_api: Api, fake: FakeOllama) -> None:
    def remembering(body: dict[str, Any]) -> ChatScript:
        said = " ".join(m["content"] for m in body["messages"] if m["role"] == "user")
        return ChatScript(chunks=("Your bike is the red one.",) if "red" in said else ("Which bike?",))

    fake.reply = remembering
    session = await open_session(chat_api, await new_agent(chat_api))
    path = f"/api/v1/chat/sessions/{session['id']}/messages"
    status, first = await chat_api.call("POST", path, role="designer", json={"message": "My bike is red."})
    assert status == 200, first
    status, second = await chat_api.call("POST", path, role="designer", json={"message": "Which bike is mine?"})
    assert (status, second["reply"]) == (200, "Your bike is the red one."), second
    history = fake.bodies("/api/chat")[-1]["messages"]
    assert {"role": "user", "content": "My bike is red."} in history
    assert {"role": "assistant", "content": first["reply"]} in history
    # Another session of the same agent (no contact) starts with no memory of this one.
    other = await open_session(chat_api, session["agent_id"])
    status, fresh = await chat_api.call("POST", f"/api/v1/chat/sessions/{other['id']}/messages", role="designer",
                                        json={"message": "Which bike is mine?"})
    assert (status, fresh["reply"]) == (200, "Which bike?")


async def test_a_contact_session_shares_the_contacts_memory(chat_api: Api, fake: FakeOllama) -> None:
    with session_scope(chat_api.engine) as db:
        contact = Contact(name="Ada", email="ada@example.org")
        db.add(contact)
        db.flush()
        contact_id = contact.id
    agent_id = await new_agent(chat_api)
    first = await open_session(chat_api, agent_id, contact_id=contact_id)
    fake.scripts.append(ChatScript(chunks=("Noted.",)))
    status, _ = await chat_api.call("POST", f"/api/v1/chat/sessions/{first['id']}/messages", role="designer",
                                    json={"message": "My order number is 4417."})
    assert status == 200
    second = await open_session(chat_api, agent_id, contact_id=contact_id)
    status, _ = await chat_api.call("POST", f"/api/v1/chat/sessions/{second['id']}/messages", role="designer",
                                    json={"message": "What was my order number?"})
    assert status == 200
    assert {"role": "user", "content": "My order number is 4417."} in fake.bodies("/api/chat")[-1]["messages"]
    status, listed = await chat_api.call("GET", f"/api/v1/chat/sessions?contact_id={contact_id}", role="viewer")
    assert status == 200 and {s["id"] for s in listed["items"]} == {first["id"], second["id"]}


async def test_leaving_mid_stream_cancels_the_generation_and_keeps_what_was_written(
        chat_api: Api, fake: FakeOllama) -> None:
    session = await open_session(chat_api, await new_agent(chat_api))
    fake.scripts.append(ChatScript(chunks=tuple(f"word{i} " for i in range(40)), delay=0.15))
    response = await chat_api.client.post(f"/api/v1/chat/sessions/{session['id']}/stream",
                                          json={"message": "Tell me everything."}, headers=chat_api.auth("designer"))
    assert response.status == 200
    seen = b""
    while b"event: delta" not in seen:
        seen += await asyncio.wait_for(response.content.readany(), 10)
    response.close()  # the visitor closed the tab

    # Eva stops reading the model: the model server sees its client go away long before its 40 words are out.
    await asyncio.wait_for(fake.disconnected.wait(), 10)
    assert fake.chunks_sent < 40

    reply = await cancelled_reply(chat_api.engine, session["id"], within=10)
    assert reply.role == "assistant" and reply.text.startswith("word0 ") and len(reply.text.split()) < 40
    # The session is free again: the next message is answered.
    fake.scripts.append(ChatScript(chunks=("Sorry, ", "go on.")))
    status, _, events = await stream(chat_api, f"/api/v1/chat/sessions/{session['id']}/stream",
                                     {"message": "Still there?"})
    assert status == 200 and events[-1][0] == "done" and events[-1][1]["reply"] == "Sorry, go on."


async def test_leaving_while_the_model_is_still_silent_cancels_it_at_once(chat_api: Api, fake: FakeOllama) -> None:
    """A model reading a long prompt says nothing for seconds; a visitor who leaves then must not cost them."""
    session = await open_session(chat_api, await new_agent(chat_api))
    fake.scripts.append(ChatScript(chunks=("Late ", "answer."), delay=5.0))
    response = await chat_api.client.post(f"/api/v1/chat/sessions/{session['id']}/stream",
                                          json={"message": "Hello?"}, headers=chat_api.auth("designer"))
    seen = b""
    while b"event: session" not in seen:
        seen += await asyncio.wait_for(response.content.readany(), 10)
    await model_asked(fake)
    response.close()

    # Eva gave the generation up well before the model's first word (5 s): nothing had to be written to notice
    # that the client was gone.
    reply = await cancelled_reply(chat_api.engine, session["id"], within=3)
    assert reply.text == ""


async def test_one_message_at_a_time_per_session(chat_api: Api, fake: FakeOllama) -> None:
    session = await open_session(chat_api, await new_agent(chat_api))
    other = await open_session(chat_api, session["agent_id"])
    fake.scripts.append(ChatScript(chunks=("slow ",) * 10, delay=0.1))
    path = f"/api/v1/chat/sessions/{session['id']}/stream"
    first = asyncio.create_task(stream(chat_api, path, {"message": "First question"}))
    await model_asked(fake)
    status, _, events = await stream(chat_api, path, {"message": "Second question"})
    assert status == 409 and events[0][1]["error"]["code"] == "chat_busy"
    # Another session is not held up by it.
    fake.scripts.append(ChatScript(chunks=("Hi.",)))
    status, reply = await chat_api.call("POST", f"/api/v1/chat/sessions/{other['id']}/messages", role="designer",
                                        json={"message": "Hello"})
    assert (status, reply["reply"]) == (200, "Hi.")
    status, _, events = await first
    assert status == 200 and events[-1][1]["reply"] == "slow " * 10
    # The refused message was not stored.
    assert [m.text for m in messages_of(chat_api.engine, session["id"]) if m.role == "user"] == ["First question"]


async def test_too_many_replies_at_once_are_refused_not_queued(chat_api: Api, fake: FakeOllama) -> None:
    chat = chat_api.app[SERVICES_KEY].chat
    assert chat is not None
    chat.max_turns = 1
    first = await open_session(chat_api, await new_agent(chat_api))
    other = await open_session(chat_api, first["agent_id"])
    fake.scripts.append(ChatScript(chunks=("slow ",) * 5, delay=0.1))
    running = asyncio.create_task(stream(chat_api, f"/api/v1/chat/sessions/{first['id']}/stream", {"message": "Hi"}))
    await model_asked(fake)
    response = await chat_api.client.post(f"/api/v1/chat/sessions/{other['id']}/stream", json={"message": "Hi"},
                                          headers=chat_api.auth("designer"))
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (429, "chat_overloaded")
    assert response.headers["Retry-After"] == "2"
    assert (await running)[2][-1][0] == "done"
    fake.scripts.append(ChatScript(chunks=("Now.",)))
    status, reply = await chat_api.call("POST", f"/api/v1/chat/sessions/{other['id']}/messages", role="designer",
                                        json={"message": "Hi again"})
    assert (status, reply["reply"]) == (200, "Now.")  # the slot came back


async def test_a_failing_model_ends_with_the_fallback_or_the_partial_reply(chat_api: Api, fake: FakeOllama) -> None:
    agent_id = await new_agent(chat_api, fallback_message="Sorry, I cannot answer right now.")
    session = await open_session(chat_api, agent_id)
    path = f"/api/v1/chat/sessions/{session['id']}/stream"
    fake.scripts.append(ChatScript(status=500, error="out of memory"))
    status, _, events = await stream(chat_api, path, {"message": "Hello?"})
    done = events[-1][1]
    assert status == 200 and events[-1][0] == "done"
    assert done["fallback"] and done["reply"] == "Sorry, I cannot answer right now." and done["error"]
    fake.scripts.append(ChatScript(chunks=("We open ", "at", " nine"), error_after=2))
    status, _, events = await stream(chat_api, path, {"message": "When do you open?"})
    done = events[-1][1]
    assert done["reply"] == "We open at" and done["error"] and not done["fallback"]


async def test_the_agent_stream_opens_a_session_and_continues_it(chat_api: Api, fake: FakeOllama) -> None:
    agent_id = await new_agent(chat_api)
    fake.scripts.extend([ChatScript(chunks=("Hello!",)), ChatScript(chunks=("Still here.",))])
    status, _, events = await stream(chat_api, f"/api/v1/agents/{agent_id}/chat/stream", {"message": "Hi"})
    assert status == 200 and events[0][0] == "session"
    session_id = events[0][1]["session_id"]
    # The original product's path answers the same way, in the session the first stream opened.
    status, _, events = await stream(chat_api, f"/api/v1/agents/ollama/{agent_id}/chat/stream",
                                     {"message": "Are you there?", "session_id": session_id})
    assert status == 200 and events[0][1]["session_id"] == session_id and events[-1][1]["reply"] == "Still here."
    with session_scope(chat_api.engine) as db:
        row = db.get(Conversation, session_id)
        assert row is not None and (row.channel, row.agent_id) == ("chat", agent_id)
    other_agent = await new_agent(chat_api, name="other")
    status, _, events = await stream(chat_api, f"/api/v1/agents/{other_agent}/chat/stream",
                                     {"message": "Hi", "session_id": session_id})
    assert status == 404 and events[0][1]["error"]["field"] == "session_id"
    # A refused message opens no session.
    status, _, events = await stream(chat_api, f"/api/v1/agents/{agent_id}/chat/stream", {"message": "   "})
    assert status == 422 and events[0][1]["error"]["field"] == "message"
    status, listed = await chat_api.call("GET", "/api/v1/chat/sessions", role="viewer")
    assert listed["total"] == 1


async def test_a_flow_answers_in_chat_before_the_agent(chat_api: Api, fake: FakeOllama) -> None:
    agent_id = await new_agent(chat_api)
    status, flow = await chat_api.call("POST", "/api/v1/flows", role="designer", json={
        "name": "callback", "start_step": "name", "steps": [
            {"id": "name", "say": "Who should we call back?",
             "collect": {"var": "name", "type": "text", "max_length": 80}, "next": "done"},
            {"id": "done", "say": "Thanks, {name}. We will call you.", "end": "booked"}]})
    assert status == 201, flow
    status, changed = await chat_api.call("PATCH", f"/api/v1/agents/{agent_id}", role="designer",
                                          json={"start_flow": "callback"})
    assert status == 200, changed
    session = await open_session(chat_api, agent_id)
    path = f"/api/v1/chat/sessions/{session['id']}/stream"
    status, _, events = await stream(chat_api, path, {"message": "Hello"})
    assert status == 200 and events[-1][1]["flow"] == "callback"
    assert events[-1][1]["reply"] == "Who should we call back?"
    status, _, events = await stream(chat_api, path, {"message": "Grace Hopper"})
    assert events[-1][1]["reply"] == "Thanks, Grace Hopper. We will call you."
    assert not fake.bodies("/api/chat")  # the flow asked no model
    status, runs = await chat_api.call("GET", f"/api/v1/flows/{flow['id']}/runs", role="viewer")
    assert status == 200 and runs["items"][0]["variables"]["name"] == "Grace Hopper"


# ---------------------------------------------------------------------------------------------- refusals
async def test_bad_requests_get_clear_errors(chat_api: Api, fake: FakeOllama) -> None:
    agent_id = await new_agent(chat_api)
    session = await open_session(chat_api, agent_id)
    sid = session["id"]
    cases: list[tuple[str, str, str | None, Any, int, str]] = [
        ("POST", f"/api/v1/chat/sessions/{sid}/stream", "designer", {"message": ""}, 422, "message"),
        ("POST", f"/api/v1/chat/sessions/{sid}/stream", "designer", {"message": " \n "}, 422, "message"),
        ("POST", f"/api/v1/chat/sessions/{sid}/stream", "designer", {"message": "x" * 8001}, 422, "message"),
        ("POST", f"/api/v1/chat/sessions/{sid}/stream", "designer", {"message": "hi", "x": 1}, 422, "x"),
        ("POST", "/api/v1/chat/sessions/999/stream", "designer", {"message": "hi"}, 404, "session_id"),
        ("POST", "/api/v1/chat/sessions/999/messages", "designer", {"message": "hi"}, 404, "session_id"),
        ("GET", "/api/v1/chat/sessions/999", "viewer", None, 404, "session_id"),
        ("POST", "/api/v1/chat/sessions", "designer", {"agent_id": 999}, 404, "agent_id"),
        ("POST", "/api/v1/chat/sessions", "designer", {"agent_id": agent_id, "contact_id": 999}, 422, "contact_id"),
        ("POST", "/api/v1/chat/sessions", "designer", {"agent_id": agent_id, "external_id": "v" * 256}, 422,
         "external_id"),
        ("POST", f"/api/v1/chat/sessions/{sid}/stream", "viewer", {"message": "hi"}, 403, "role"),
        ("POST", f"/api/v1/chat/sessions/{sid}/stream", None, {"message": "hi"}, 401, None),  # type: ignore[list-item]
    ]
    for method, path, role, body, expected, field in cases:
        status, error = await chat_api.call(method, path, role=role, json=body)
        assert status == expected, (path, body, error)
        if field is not None:
            assert error["error"]["field"] == field, (path, body, error)
    # A conversation of another channel is not a chat session.
    with session_scope(chat_api.engine) as db:
        whatsapp = Conversation(channel="whatsapp", agent_id=agent_id)
        db.add(whatsapp)
        db.flush()
        whatsapp_id = whatsapp.id
    status, error = await chat_api.call("POST", f"/api/v1/chat/sessions/{whatsapp_id}/messages", role="designer",
                                        json={"message": "hi"})
    assert status == 404
    # An inactive agent takes no chat.
    status, _ = await chat_api.call("POST", f"/api/v1/agents/{agent_id}/deactivate", role="designer")
    assert status == 200
    status, error = await chat_api.call("POST", f"/api/v1/chat/sessions/{sid}/stream", role="designer",
                                        json={"message": "hi"})
    assert (status, error["error"]["code"]) == (409, "agent_inactive")
    status, error = await chat_api.call("POST", "/api/v1/chat/sessions", role="designer", json={"agent_id": agent_id})
    assert (status, error["error"]["code"]) == (409, "agent_inactive")
    assert not fake.bodies("/api/chat")  # nothing reached the model
    assert [m for m in messages_of(chat_api.engine, sid)] == []


async def test_chat_without_a_model_is_unavailable_and_still_readable(tmp_path: Path, sqlite_engine: Engine) -> None:
    # As the runtime wires it when no model could start: a chat service without an agent core.
    api = await start_api(offline_settings(tmp_path / "data"), sqlite_engine, offline_asterisk=True,
                          chat=ChatService(sqlite_engine, None))
    try:
        agent_id = await new_agent(api)
        status, error = await api.call("POST", "/api/v1/chat/sessions", role="designer", json={"agent_id": agent_id})
        assert (status, error["error"]["code"]) == (503, "llm_unavailable")
        with session_scope(sqlite_engine) as db:
            old = Conversation(channel="chat", agent_id=agent_id)
            db.add(old)
            db.flush()
            old_id = old.id
        for path in (f"/api/v1/chat/sessions/{old_id}", f"/api/v1/chat/sessions/{old_id}/messages",
                     "/api/v1/chat/sessions"):
            assert (await api.call("GET", path, role="viewer"))[0] == 200, path  # history needs no model
        status, error = await api.call("POST", f"/api/v1/chat/sessions/{old_id}/stream", role="designer",
                                       json={"message": "hi"})
        assert (status, error["error"]["code"]) == (503, "llm_unavailable")
        assert chat_rows(sqlite_engine) == 1  # nothing was stored for the refused requests
    finally:
        await api.client.close()


def chat_rows(engine: Engine) -> int:
    with session_scope(engine) as db:
        return len(db.exec(select(Conversation).where(Conversation.channel == "chat")).all()) + len(
            db.exec(select(Message)).all())


async def test_a_chat_key_continues_only_its_own_sessions_and_names_no_contact(chat_api: Api, fake: FakeOllama) -> None:
    from admin_api import accounts

    with session_scope(chat_api.engine) as db:
        _row, site = accounts.create_api_key(db, "site", "chat")
        _row, other_site = accounts.create_api_key(db, "other-site", "chat")
        contact = Contact(name="Ada", email="ada@example.org")
        db.add(contact)
        db.flush()
        contact_id = contact.id
    agent_id = await new_agent(chat_api)
    as_site, as_other = {"X-API-Key": site}, {"X-API-Key": other_site}
    status, error = await chat_api.call("POST", "/api/v1/chat/sessions", role=None, headers=as_site,
                                        json={"agent_id": agent_id, "contact_id": contact_id})
    assert (status, error["error"]["field"]) == (403, "contact_id")  # a contact's memory is not a website's to open
    status, session = await chat_api.call("POST", "/api/v1/chat/sessions", role=None, headers=as_site,
                                          json={"agent_id": agent_id})
    assert status == 201, session
    fake.scripts.extend([ChatScript(chunks=("Hello.",)), ChatScript(chunks=("Hi again.",))])
    path = f"/api/v1/chat/sessions/{session['id']}/messages"
    status, reply = await chat_api.call("POST", path, role=None, headers=as_site, json={"message": "Hi"})
    assert (status, reply["reply"]) == (200, "Hello.")
    # Another site's key cannot continue this visitor's session (it would read their conversation back) ...
    for route in (path, f"/api/v1/chat/sessions/{session['id']}/stream"):
        status, error = await chat_api.call("POST", route, role=None, headers=as_other, json={"message": "Hi"})
        assert (status, error["error"]["code"]) == (404, "not_found"), route
    status, error = await chat_api.call("POST", f"/api/v1/agents/{agent_id}/chat/stream", role=None,
                                        headers=as_other, json={"message": "Hi", "session_id": session["id"]})
    assert status == 404
    # ... nor read it; a designer (the site's operator) can do both.
    assert (await chat_api.call("GET", path, role=None, headers=as_other))[0] == 403
    status, reply = await chat_api.call("POST", path, role="designer", json={"message": "Hi"})
    assert (status, reply["reply"]) == (200, "Hi again.")
    assert len(fake.bodies("/api/chat")) == 2
