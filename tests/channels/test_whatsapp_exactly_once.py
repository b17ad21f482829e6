"""Attacks on "every accepted WhatsApp message is answered exactly once" (review F13, L18, L10): a send that
times out but was delivered, a long reply whose second part fails, two workers sharing one database, a worker
that died during a POST, and a flood of messages.  Real components throughout: the aiohttp admin API with the
signed webhook, SQLite and a real PostgreSQL, the local Graph API server; a scripted model answers."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from channels import store
from channels.whatsapp.client import WhatsAppClient
from channels.whatsapp.service import WhatsAppService
from models import Contact, Conversation, InboundMessage, Message, utcnow
from models.db import make_engine, session_scope
from tests.api.conftest import offline_settings
from tests.channels.conftest import ScriptedLLM
from tests.channels.test_whatsapp_service import SENDER, make_world, no_sleep, payload, text_payload
from tests.fakes.graph_server import FakeGraph, Reply
from voicebot.agent.core import AgentCore
from voicebot.agent.store import AgentStore

OUTAGE = Reply(status=503, body={"error": {"message": "Service unavailable", "code": 2}})


def sent_bodies(graph: FakeGraph) -> list[str]:
    return [m["text"]["body"] for m in graph.sent]


async def test_a_send_that_timed_out_is_never_sent_again(sqlite_db: Engine, graph: FakeGraph,
                                                         tmp_path: Path) -> None:
    """X12: Graph answers 200 only after the client gave up.  The customer has the reply; the sweeper must not
    send it a second time."""
    world = await make_world(sqlite_db, graph, tmp_path, client_timeout=0.3, retry_interval=0)
    try:
        graph.replies.append(Reply(delay=1.0))  # accepted and delivered, but answered after the client's timeout
        status, body = await world.post(text_payload("wamid.slow", "Is my bike ready?"))
        assert (status, body["accepted"]) == (200, 1)
        await world.service.drain()
        await graph.wait_for_messages(1)  # the server did take the message
        for _ in range(3):  # the sweeper runs, again and again
            await world.service.retry_pending()
            await world.service.drain()
        assert sent_bodies(graph) == ["You said: Is my bike ready?"]
        assert graph.requests == 1
        (row,) = world.rows(InboundMessage)
        assert (row.status, row.error, row.sending_part) == ("uncertain", "whatsapp_timeout", 0)
        assert len(world.llm.calls) == 1
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


async def test_a_failed_second_part_does_not_resend_the_first(sqlite_db: Engine, graph: FakeGraph,
                                                              tmp_path: Path) -> None:
    first, second = "A" * 3000 + ".", "B" * 3000 + "."
    world = await make_world(sqlite_db, graph, tmp_path, ScriptedLLM(lambda _m: f"{first}\n\n{second}"),
                             retry_interval=0)
    try:
        # Part 1 goes through; part 2 meets an outage (the client's three attempts all fail).
        graph.replies.extend([Reply(), OUTAGE, OUTAGE, OUTAGE])
        await world.post(text_payload("wamid.long", "Tell me everything"))
        await world.service.drain()
        (row,) = world.rows(InboundMessage)
        assert (row.status, row.error) == ("pending", "whatsapp_unavailable")
        assert sent_bodies(graph) == [first]
        assert await world.service.retry_pending() == 1
        await world.service.drain()
        assert sent_bodies(graph) == [first, second]
        (row,) = world.rows(InboundMessage)
        assert (row.status, row.attempts) == ("done", 2)
        _user, assistant = world.rows(Message)
        assert assistant.timings is not None and len(assistant.timings["whatsapp_ids"]) == 2
        assert assistant.external_id == assistant.timings["whatsapp_ids"][0]
        assert len(world.llm.calls) == 1
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


async def test_an_uncertain_part_is_settled_by_its_receipt_and_the_rest_follows(sqlite_db: Engine,
                                                                               graph: FakeGraph,
                                                                               tmp_path: Path) -> None:
    """The answer to part 1 was lost, but WhatsApp's receipt (carrying the part's callback data) proves it was
    sent: part 1 is not sent again, part 2 goes out."""
    first, second = "A" * 3000 + ".", "B" * 3000 + "."
    world = await make_world(sqlite_db, graph, tmp_path, ScriptedLLM(lambda _m: f"{first}\n\n{second}"),
                             client_timeout=0.3, retry_interval=0)
    try:
        graph.replies.append(Reply(delay=1.0))
        await world.post(text_payload("wamid.receipt", "Tell me everything"))
        await world.service.drain()
        await graph.wait_for_messages(1)
        assert world.rows(InboundMessage)[0].status == "uncertain"
        assert await world.service.retry_pending() == 0
        receipt = payload("status_read")
        receipt["entry"][0]["changes"][0]["value"]["statuses"][0].update(
            {"id": "wamid.part-one", "status": "sent",
             "biz_opaque_callback_data": graph.sent[0]["biz_opaque_callback_data"]})
        status, body = await world.post(receipt)
        assert (status, body["statuses"]) == (200, 1)
        await world.service.drain()
        assert sent_bodies(graph) == [first, second]
        (row,) = world.rows(InboundMessage)
        assert row.status == "done" and row.sent_parts is not None and row.sent_parts[0] == "wamid.part-one"
        _user, assistant = world.rows(Message)
        assert assistant.external_id == "wamid.part-one" and assistant.timings is not None
        assert assistant.timings["whatsapp_ids"] == row.sent_parts
        status, _ = await world.post(receipt)  # the receipt again (or a later "delivered"): nothing more happens
        await world.service.drain()
        assert status == 200 and len(graph.sent) == 2 and len(world.llm.calls) == 1
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


def add_pending(engine: Engine, count: int, senders: int) -> None:
    with session_scope(engine) as session:
        for index in range(count):
            session.add(InboundMessage(channel="whatsapp", external_id=f"wamid.pending-{index}",
                                       sender=f"1650555{index % senders:04d}", text=f"question {index}"))


async def test_two_workers_on_one_database_answer_each_message_once(any_db: Engine, graph: FakeGraph,
                                                                    tmp_path: Path) -> None:
    """The README's scale-out: two Eva processes (own engine, own model, own client) on one database find the
    same pending rows at the same moment."""
    add_pending(any_db, 20, senders=5)
    url = any_db.url.render_as_string(hide_password=False)
    settings = offline_settings(tmp_path / "data", whatsapp_app_secret="s", whatsapp_token=graph.token,
                                whatsapp_phone_number_id=graph.phone_number_id, whatsapp_api_url=graph.api_url)
    workers: list[tuple[WhatsAppService, ScriptedLLM, Engine]] = []
    for name in ("one", "two"):
        engine, llm = make_engine(url), ScriptedLLM(delay=0.01)
        service = WhatsAppService(settings, engine, AgentCore(settings, engine, llm), worker_id=f"worker-{name}",
                                  client=WhatsAppClient.from_settings(settings, sleep=no_sleep))
        workers.append((service, llm, engine))
    try:
        started = await asyncio.gather(*(service.retry_pending() for service, _, _ in workers))
        assert sum(started) >= 5  # each sender's oldest message was free for somebody
        await graph.wait_for_messages(20)
        for _ in range(2):
            await asyncio.gather(*(service.drain() for service, _, _ in workers))
        bodies = sent_bodies(graph)
        assert sorted(bodies) == sorted(f"You said: question {i}" for i in range(20))
        assert sum(len(llm.calls) for _, llm, _ in workers) == 20
        with session_scope(any_db) as session:
            rows = list(session.exec(select(InboundMessage)).all())
        assert {r.status for r in rows} == {"done"} and {r.claimed_by for r in rows} == {""}
        for sender in {r.sender for r in rows}:  # each sender's messages were answered in order
            mine = [int(b.split()[-1]) for (m, b) in zip(graph.sent, bodies, strict=True) if m["to"] == sender]
            assert mine == sorted(mine)
    finally:
        for service, _, engine in workers:
            await service.close()
            await service.client.close()
            engine.dispose()


async def test_a_row_held_by_a_live_worker_is_left_alone_until_its_lease_runs_out(sqlite_db: Engine,
                                                                                  graph: FakeGraph,
                                                                                  tmp_path: Path) -> None:
    add_pending(sqlite_db, 1, senders=1)
    with session_scope(sqlite_db) as session:
        row = session.exec(select(InboundMessage)).one()
        assert row.id is not None
        assert store.claim_inbound(session, row.id, "elsewhere", timedelta(minutes=2)) is not None
    world = await make_world(sqlite_db, graph, tmp_path)
    try:
        assert await world.service.retry_pending() == 0
        with session_scope(sqlite_db) as session:  # the other worker died; its lease runs out
            held = session.exec(select(InboundMessage)).one()
            held.lease_until = utcnow() - timedelta(seconds=1)
            session.add(held)
        assert await world.service.retry_pending() == 1
        await world.service.drain()
        assert sent_bodies(graph) == ["You said: question 0"]
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


async def test_a_worker_that_died_during_a_send_does_not_cause_a_second_one(sqlite_db: Engine, graph: FakeGraph,
                                                                            tmp_path: Path) -> None:
    """The process was killed after writing the part's intent and before Graph's answer: maybe delivered."""
    add_pending(sqlite_db, 1, senders=1)
    with session_scope(sqlite_db) as session:
        row = session.exec(select(InboundMessage)).one()
        assert row.id is not None
        assert store.claim_inbound(session, row.id, "dead", timedelta(seconds=-1)) is not None
        assert store.begin_part(session, row.id, "dead", 0, timedelta(seconds=-1))
    world = await make_world(sqlite_db, graph, tmp_path)
    try:
        assert await world.service.retry_pending() == 1  # what start() does first
        await world.service.drain()
        (row,) = world.rows(InboundMessage)
        assert (row.status, row.error) == ("uncertain", "whatsapp_send_interrupted")
        assert graph.requests == 0 and world.llm.calls == []
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


async def test_a_flood_is_held_in_the_database_not_in_tasks(sqlite_db: Engine, graph: FakeGraph,
                                                            tmp_path: Path) -> None:
    """L18: 60 messages at once, at most 5 in hand; the rest wait in the database and are all answered."""
    world = await make_world(sqlite_db, graph, tmp_path, ScriptedLLM(delay=0.01), max_queued=5)
    try:
        await world.service.start()
        for batch in range(6):
            data = text_payload(f"wamid.flood-{batch}-0", "flood 0", sender=f"4915100{batch:05d}")
            messages = data["entry"][0]["changes"][0]["value"]["messages"]
            for index in range(1, 10):
                messages.append({**messages[0], "id": f"wamid.flood-{batch}-{index}", "from": f"49151{index:07d}",
                                 "text": {"body": f"flood {batch * 10 + index}"}})
            status, body = await world.post(data)
            assert (status, body["accepted"]) == (200, 10)
            assert len(world.service._tasks) <= 5
        assert len(world.rows(InboundMessage)) == 60  # everything accepted is stored
        await graph.wait_for_messages(60, timeout=60)
        await world.service.drain()
        assert len(graph.sent) == 60
        assert {r.status for r in world.rows(InboundMessage)} == {"done"}
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


async def test_a_message_older_than_the_window_is_kept_but_not_answered(sqlite_db: Engine, graph: FakeGraph,
                                                                        tmp_path: Path) -> None:
    world = await make_world(sqlite_db, graph, tmp_path)
    try:
        stale = text_payload("wamid.stale", "Are you open today?")
        stale["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(int(time.time()) - 2 * 86400)
        status, body = await world.post(stale)
        assert (status, body["accepted"], body["ignored"]) == (200, 0, 1)
        status, body = await world.post(stale)  # redelivered: still a duplicate, not a new message
        assert (status, body["duplicates"]) == (200, 1)
        await world.service.drain()
        (row,) = world.rows(InboundMessage)
        assert (row.status, row.text) == ("expired", "Are you open today?")
        assert graph.requests == 0 and world.llm.calls == []
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


def _turn(session: Session, contact_id: int, external_id: str) -> int:
    conversation_id = store.new_conversation(session, "email", None, contact_id, "thread")
    store.add_message(session, conversation_id, "user", "My address is 1 Main St", external_id=external_id)
    store.add_message(session, conversation_id, "assistant", "Noted: 1 Main St", external_id="<reply@eva>")
    return conversation_id


def test_a_turn_is_found_only_within_its_own_contact(sqlite_db: Engine) -> None:
    """F13: an id chosen by the sender (an e-mail Message-ID) reused by somebody else is not their turn."""
    with session_scope(sqlite_db) as session:
        victim, attacker = Contact(email="victim@example.org"), Contact(email="attacker@example.net")
        session.add_all([victim, attacker])
        session.flush()
        assert victim.id is not None and attacker.id is not None
        conversation_id = _turn(session, victim.id, "<known@example.org>")
        found = store.find_turn(session, "email", "<known@example.org>", contact_id=victim.id)
        assert found is not None and found.conversation_id == conversation_id and found.answered
        assert store.find_turn(session, "email", "<known@example.org>", contact_id=attacker.id) is None


async def test_a_spoofed_caller_id_does_not_open_the_whatsapp_contact(sqlite_db: Engine, graph: FakeGraph,
                                                                      tmp_path: Path) -> None:
    """F4: the WhatsApp contact (verified by Meta's signature) is not found by a bare caller ID."""
    world = await make_world(sqlite_db, graph, tmp_path)
    try:
        await world.post(text_payload("wamid.order", "My order number is 4711"))
        await world.service.drain()
        (contact,) = world.rows(Contact)
        contacts = AgentStore(sqlite_db)
        caller = await contacts.find_or_create_contact(phone="+" + SENDER)  # voice: caller ID, unverified
        assert caller.id != contact.id and caller.whatsapp_id is None
        vouched = await contacts.find_or_create_contact(phone="+" + SENDER, verified=True)  # an attesting trunk
        assert vouched.id == contact.id
        with session_scope(sqlite_db) as session:
            mine = session.exec(select(Conversation.id).where(col(Conversation.contact_id) == caller.id)).all()
            assert mine == []
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


async def test_a_spoofed_caller_id_cannot_plant_turns_in_a_later_whatsapp_contact(sqlite_db: Engine,
                                                                                  graph: FakeGraph,
                                                                                  tmp_path: Path) -> None:
    """F4, the other way round: somebody calls first with the victim's number (a bare caller ID) and says things;
    when the victim then writes on WhatsApp, those turns must not be the victim's memory."""
    contacts = AgentStore(sqlite_db)
    spoofed = await contacts.find_or_create_contact(phone="+" + SENDER)
    world = await make_world(sqlite_db, graph, tmp_path)
    try:
        await world.post(text_payload("wamid.victim", "Hi, what is my delivery address?"))
        await world.service.drain()
        on_whatsapp = next(c for c in world.rows(Contact) if c.whatsapp_id == SENDER)
        assert on_whatsapp.id != spoofed.id
        assert (spoofed.phone_verified, on_whatsapp.phone) == (False, None)
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()

