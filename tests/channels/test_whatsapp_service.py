"""The WhatsApp channel through the admin API: Meta's documented webhook payloads in (signed), the agent core's
reply out to a local server speaking the Graph API wire format, everything persisted.  A scripted model answers
here (the mechanics are the point); the real embedded model answers in test_channels_real_model.py."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from channels.whatsapp.client import WhatsAppClient
from channels.whatsapp.codec import signature
from channels.whatsapp.service import DECLINE_TEXT, WhatsAppService
from models import Contact, Conversation, InboundMessage, Message, utcnow
from models.db import session_scope
from tests.api.conftest import Api, offline_settings, start_api
from tests.channels.conftest import ScriptedLLM
from tests.fakes.graph_server import FakeGraph, Reply, graph_error
from voicebot.agent.core import AgentCore

DATA = Path(__file__).resolve().parent.parent / "data" / "whatsapp"
APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
WEBHOOK = "/api/v1/whatsapp/webhook"
SENDER = "16505551234"


def payload(name: str, *, timestamp: int | None = None) -> dict[str, Any]:
    """A documented notification, its messages sent just now (or at ``timestamp``): the documents' own
    timestamps are years old, and a message older than a day is not answered."""
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    for entry in data.get("entry", []):
        for change in entry.get("changes", []):
            for message in change.get("value", {}).get("messages", []):
                message["timestamp"] = str(int(time.time()) if timestamp is None else timestamp)
    return data


def text_payload(wamid: str, body: str, sender: str = SENDER) -> dict[str, Any]:
    """The documented text-message notification with another message id, text or sender."""
    data = payload("text_message")
    value = data["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = sender
    value["messages"][0].update({"id": wamid, "from": sender, "text": {"body": body}})
    return data


async def no_sleep(_delay: float) -> None:
    return None


@dataclass
class World:
    api: Api
    service: WhatsAppService
    graph: FakeGraph
    llm: ScriptedLLM
    engine: Engine

    async def post(self, data: dict[str, Any] | bytes, *, sign: bool = True,
                   secret: str = APP_SECRET) -> tuple[int, Any]:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        headers = {"Content-Type": "application/json"}
        if sign:
            headers["X-Hub-Signature-256"] = signature(secret, body)
        return await self.api.call("POST", WEBHOOK, role=None, data=body, headers=headers)

    def rows(self, model: Any) -> list[Any]:
        with session_scope(self.engine) as session:
            return list(session.exec(select(model).order_by(col(model.id))).all())


async def make_world(engine: Engine, graph: FakeGraph, tmp_path: Path, llm: ScriptedLLM | None = None, *,
                     client_timeout: float = 15.0, **service_kwargs: Any) -> World:
    settings = offline_settings(tmp_path / "data", whatsapp_app_secret=APP_SECRET, whatsapp_verify_token=VERIFY_TOKEN,
                                whatsapp_token=graph.token, whatsapp_phone_number_id=graph.phone_number_id,
                                whatsapp_api_url=graph.api_url)
    llm = llm or ScriptedLLM()
    core = AgentCore(settings, engine, llm)
    client = WhatsAppClient.from_settings(settings, sleep=no_sleep, timeout=client_timeout)
    service = WhatsAppService(settings, engine, core, client=client, **service_kwargs)
    api = await start_api(settings, engine, offline_asterisk=True, whatsapp=service)
    return World(api, service, graph, llm, engine)


@pytest.fixture
async def world(sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(sqlite_db, graph, tmp_path)
    yield w
    await w.service.close()
    await w.service.client.close()
    await w.api.client.close()


async def test_verification_handshake(world: World) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    response = await world.api.client.get(WEBHOOK, params=query)
    assert (response.status, response.content_type, await response.text()) == (200, "text/plain", "1158201444")
    for wrong in ({"hub.verify_token": "guess"}, {"hub.mode": "unsubscribe"}):
        status, body = await world.api.call("GET", WEBHOOK, role=None, params={**query, **wrong})
        assert (status, body["error"]["code"]) == (403, "verification_failed")
    status, body = await world.api.call("GET", WEBHOOK, role=None, params={"hub.mode": "subscribe"})
    assert status == 422


async def test_unsigned_or_forged_webhooks_are_refused_and_nothing_is_stored(world: World) -> None:
    data = payload("text_message")
    status, body = await world.post(data, sign=False)
    assert (status, body["error"]["code"]) == (401, "signature_missing")
    status, body = await world.post(data, secret="not-the-app-secret")
    assert (status, body["error"]["code"]) == (403, "signature_invalid")
    status, body = await world.post(b"{not json")
    assert (status, body["error"]["code"]) == (400, "malformed_json")
    status, body = await world.post({"object": "page", "entry": []})
    assert (status, body["error"]["code"]) == (422, "invalid_input")
    assert world.rows(InboundMessage) == [] and world.graph.requests == 0 and world.llm.calls == []


async def test_text_message_is_stored_before_the_ack_then_answered(any_db: Engine, graph: FakeGraph,
                                                                    tmp_path: Path) -> None:
    world = await make_world(any_db, graph, tmp_path, ScriptedLLM(delay=0.05))
    try:
        status, body = await world.post(payload("text_message"))
        assert (status, body) == (200, {"accepted": 1, "duplicates": 0, "ignored": 0, "statuses": 0})
        (row,) = world.rows(InboundMessage)  # durable before the 200, while the reply is still being generated
        assert (row.external_id, row.sender, row.sender_name, row.text) == (
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=", SENDER, "Sheena Nelson",
            "Does it come in another color?")
        await world.service.drain()
        (sent,) = graph.sent
        assert sent == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": SENDER,
                        "type": "text", "text": {"preview_url": False,
                                                 "body": "You said: Does it come in another color?"},
                        # echoed in the part's receipts: settles a send whose answer was lost
                        "biz_opaque_callback_data": f"eva-part:{row.external_id}:0"}
        (contact,) = world.rows(Contact)
        assert (contact.whatsapp_id, contact.name) == (SENDER, "Sheena Nelson")
        (conversation,) = world.rows(Conversation)
        assert (conversation.channel, conversation.contact_id, conversation.external_id) == (
            "whatsapp", contact.id, SENDER)
        user, assistant = world.rows(Message)
        assert (user.role, user.external_id, user.text) == ("user", row.external_id, row.text)
        assert (assistant.role, assistant.text) == ("assistant", "You said: Does it come in another color?")
        assert assistant.external_id.startswith("wamid.") and assistant.conversation_id == conversation.id
        (row,) = world.rows(InboundMessage)
        assert (row.status, row.attempts, row.conversation_id) == ("done", 1, conversation.id)
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


async def test_redelivered_and_concurrent_duplicates_are_answered_once(any_db: Engine, graph: FakeGraph,
                                                                       tmp_path: Path) -> None:
    world = await make_world(any_db, graph, tmp_path)
    try:
        data = payload("text_message")
        answers = await asyncio.gather(*(world.post(data) for _ in range(5)))
        assert all(status == 200 for status, _ in answers)
        assert sorted(body["accepted"] for _, body in answers) == [0, 0, 0, 0, 1]
        assert sum(body["duplicates"] for _, body in answers) == 4
        await world.service.drain()
        status, body = await world.post(data)  # Meta redelivers later
        assert (status, body["accepted"], body["duplicates"]) == (200, 0, 1)
        await world.service.drain()
        assert len(graph.sent) == 1 and len(world.llm.calls) == 1 and len(world.rows(InboundMessage)) == 1
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


async def test_one_sender_is_answered_in_order_with_memory(world: World) -> None:
    first = text_payload("wamid.first", "My name is Ada.")
    second = text_payload("wamid.second", "What is my name?")
    both = copy.deepcopy(first)
    both["entry"][0]["changes"][0]["value"]["messages"].append(second["entry"][0]["changes"][0]["value"]["messages"][0])
    other = text_payload("wamid.other", "Hello from someone else", sender="4915112345678")
    for data in (both, other):
        status, _ = await world.post(data)
        assert status == 200
    await world.service.drain()
    bodies = [(m["to"], m["text"]["body"]) for m in world.graph.sent]
    ada = [text for to, text in bodies if to == SENDER]
    assert ada == ["You said: My name is Ada.", "You said: What is my name?"]
    assert ("4915112345678", "You said: Hello from someone else") in bodies
    second_call = next(c for c in world.llm.calls if c[-1].content == "What is my name?")
    assert [m.content for m in second_call if m.role in ("user", "assistant")] == [
        "My name is Ada.", "You said: My name is Ada.", "What is my name?"]
    conversations = world.rows(Conversation)
    assert len(conversations) == 2  # one per sender; the second message continued the first's conversation


async def test_unsupported_messages_are_declined_reactions_ignored_and_receipts_recorded(world: World) -> None:
    # Images and documents are kept and acknowledged (test_whatsapp_media.py); what cannot be read is declined.
    status, body = await world.post(payload("unsupported_message"))
    assert (status, body["accepted"]) == (200, 1)
    status, body = await world.post(payload("reaction_message"))
    assert (status, body["accepted"], body["ignored"]) == (200, 0, 1)
    status, body = await world.post(payload("dashboard_test_message"))  # sent to another business number
    assert (status, body["accepted"], body["ignored"]) == (200, 0, 1)
    await world.service.drain()
    assert [m["text"]["body"] for m in world.graph.sent] == [DECLINE_TEXT]
    assert world.llm.calls == []
    user, assistant = world.rows(Message)
    assert (user.text, assistant.text) == ("[unsupported]", DECLINE_TEXT)
    receipt = payload("status_read")
    receipt["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = assistant.external_id
    status, body = await world.post(receipt)
    assert (status, body["statuses"], body["accepted"]) == (200, 1, 0)
    (_user, assistant) = world.rows(Message)
    assert assistant.timings == {"delivery": "read"}


async def test_refused_send_is_recorded_retryable_one_is_retried_without_a_new_reply(world: World) -> None:
    world.graph.replies.append(Reply(status=400, body=graph_error("error_reengagement")))
    await world.post(text_payload("wamid.late", "Still there?"))
    await world.service.drain()
    (row,) = world.rows(InboundMessage)
    assert (row.status, row.error) == ("failed", "whatsapp_window_closed")
    _user, assistant = world.rows(Message)
    assert assistant.text == "You said: Still there?" and assistant.external_id == ""  # kept, not sent

    world.graph.replies.extend([Reply(status=503, body={"error": {"message": "Service unavailable", "code": 2}})] * 3)
    await world.post(text_payload("wamid.outage", "Are you open?"))
    await world.service.drain()
    row = world.rows(InboundMessage)[1]
    assert (row.status, row.attempts, row.error) == ("pending", 1, "whatsapp_unavailable")
    assert row.claimed_by == "" and row.lease_until is not None  # released, backing off for retry_interval
    assert await world.service.retry_pending() == 0
    with session_scope(world.engine) as session:  # the back-off is over
        backing_off = session.get(InboundMessage, row.id)
        assert backing_off is not None
        backing_off.lease_until = utcnow() - timedelta(seconds=1)
        session.add(backing_off)
    assert await world.service.retry_pending() == 1
    await world.service.drain()
    row = world.rows(InboundMessage)[1]
    assert (row.status, row.attempts) == ("done", 2)
    assert [m["text"]["body"] for m in world.graph.sent] == ["You said: Are you open?"]
    assert len(world.llm.calls) == 2  # the stored reply was sent; nothing was generated twice


async def test_pending_messages_are_answered_after_a_restart(sqlite_db: Engine, graph: FakeGraph,
                                                             tmp_path: Path) -> None:
    # The first process accepts a message and is stopped while the model is still writing.
    first = await make_world(sqlite_db, graph, tmp_path, ScriptedLLM(delay=0.2), drain_timeout=0.05)
    try:
        await first.post(text_payload("wamid.crash", "Tell me about your bikes please"))
        await asyncio.sleep(0.3)
        await first.service.close()
        status, body = await first.post(text_payload("wamid.refused", "Too late"))
        assert (status, body["error"]["code"]) == (503, "shutting_down")  # Meta delivers it again later
    finally:
        await first.service.client.close()
        await first.api.client.close()
    assert graph.sent == []
    (row,) = first.rows(InboundMessage)
    assert row.status == "pending"
    _user, cut = first.rows(Message)
    assert cut.timings is not None and cut.timings.get("cancelled")

    # The next process (same database) answers it when it starts.
    settings = first.service.settings
    second = WhatsAppService(settings, sqlite_db, AgentCore(settings, sqlite_db, ScriptedLLM()),
                             client=WhatsAppClient.from_settings(settings, sleep=no_sleep))
    try:
        await second.start()
        await graph.wait_for_messages(1)
        await second.drain()
    finally:
        await second.close()
        await second.client.close()
    assert [m["text"]["body"] for m in graph.sent] == ["You said: Tell me about your bikes please"]
    (row,) = first.rows(InboundMessage)
    assert row.status == "done"
    user, assistant = first.rows(Message)  # the half-written turn was replaced by a whole one
    assert (user.text, assistant.text) == ("Tell me about your bikes please",
                                           "You said: Tell me about your bikes please")


async def test_shutdown_finishes_replies_in_hand(sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    world = await make_world(sqlite_db, graph, tmp_path, ScriptedLLM(delay=0.05))
    try:
        await world.post(text_payload("wamid.a", "one two three four"))
        await world.service.close()
        assert [m["text"]["body"] for m in graph.sent] == ["You said: one two three four"]
        assert world.rows(InboundMessage)[0].status == "done"
    finally:
        await world.service.client.close()
        await world.api.client.close()


async def test_send_message_and_conversations_routes(world: World) -> None:
    status, body = await world.api.call("POST", "/api/v1/whatsapp/send-message", role="designer",
                                        json={"to": "+16505551234", "text": "Your bike is ready."})
    assert status == 200, body
    assert body["message_id"].startswith("wamid.")
    assert world.graph.sent[-1]["to"] == SENDER and world.graph.sent[-1]["text"]["body"] == "Your bike is ready."
    status, page = await world.api.call("GET", "/api/v1/whatsapp/conversations", role="viewer")
    assert status == 200
    (item,) = page["items"]
    assert (item["id"], item["address"], item["messages"], page["total"]) == (body["conversation_id"], SENDER, 1, 1)
    (message,) = world.rows(Message)
    assert (message.role, message.external_id) == ("assistant", body["message_id"])

    world.graph.replies.append(Reply(status=400, body=graph_error("error_recipient_not_allowed")))
    status, error = await world.api.call("POST", "/api/v1/whatsapp/send-message", role="admin",
                                         json={"to": "4915112345678", "text": "Hello"})
    assert (status, error["error"]["code"]) == (502, "whatsapp_rejected")
    assert "allowed list" in error["error"]["message"]
    status, error = await world.api.call("POST", "/api/v1/whatsapp/send-message", role="admin",
                                         json={"to": "not a number", "text": "Hello"})
    assert status == 422


async def test_routes_say_what_is_missing(sqlite_db: Engine, tmp_path: Path) -> None:
    settings = offline_settings(tmp_path / "data")
    service = WhatsAppService(settings, sqlite_db, AgentCore(settings, sqlite_db, ScriptedLLM()))
    api = await start_api(settings, sqlite_db, offline_asterisk=True, whatsapp=service)
    try:
        status, body = await api.call("POST", WEBHOOK, role=None, json=payload("text_message"))
        assert (status, body["error"]["code"]) == (503, "whatsapp_not_configured")
        assert "EVA_WHATSAPP_APP_SECRET" in body["error"]["message"]
        status, body = await api.call("POST", "/api/v1/whatsapp/send-message", json={"to": SENDER, "text": "x"})
        assert (status, body["error"]["code"]) == (503, "whatsapp_not_configured")
        status, body = await api.call("GET", WEBHOOK, role=None, params={
            "hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"})
        assert (status, body["error"]["code"]) == (503, "whatsapp_not_configured")
    finally:
        await service.close()
        await api.client.close()
