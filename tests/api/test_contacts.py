"""The contacts API on SQLite and PostgreSQL: search, change, conversations across channels, merge, and erasure
of every trace of a person (rows on every channel, recordings on disk), audited -- with a second person whose
data must come through untouched."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import SQLModel, col, select

from channels import attachments
from models import (
    AuditEvent,
    Call,
    CallTurn,
    Contact,
    Conversation,
    EmailReceipt,
    FlowRun,
    InboundMessage,
    Message,
)
from models.db import session_scope
from tests.api.conftest import Api


@dataclass
class Person:
    contact_id: int
    conversations: list[int]
    call_id: int
    recording: Path


def _add(engine: Engine, *rows: SQLModel) -> list[Any]:
    with session_scope(engine) as session:
        for row in rows:
            session.add(row)
            session.flush()
        return [row.id for row in rows]  # type: ignore[attr-defined]


def seed_person(api: Api, name: str, phone: str, email: str, wa_id: str) -> Person:
    """A person known on every channel: a recorded call with turns, WhatsApp with an inbox row, e-mail with a
    receipt, a chat, a flow run, and an older call from their number that no conversation links."""
    engine = api.engine
    (contact_id,) = _add(engine, Contact(name=name, phone=phone, phone_verified=True, email=email, whatsapp_id=wa_id))
    conversations = _add(engine, *(Conversation(channel=channel, contact_id=contact_id, external_id=f"{name}-{channel}")
                                   for channel in ("voice", "whatsapp", "email", "chat")))
    voice, whatsapp, mail, chat = conversations
    recordings = api.settings.recordings_dir
    recordings.mkdir(parents=True, exist_ok=True)
    recording = recordings / f"{name}-call.wav"
    recording.write_bytes(b"RIFF....WAVE")
    # An earlier call on a trunk that does not vouch for caller ID: its conversation has no contact.
    (anonymous,) = _add(engine, Conversation(channel="voice", external_id=f"{name}-anonymous"))
    call_id, unlinked_call = _add(
        engine, Call(channel_id=f"{name}-1", caller=phone, conversation_id=voice, recording_path=str(recording),
                     outcome="completed"),
        Call(channel_id=f"{name}-0", caller=phone.removeprefix("+"), conversation_id=anonymous, outcome="completed"))
    _add(engine, CallTurn(call_id=call_id, user_text=f"I am {name}", bot_text="Hello"),
         CallTurn(call_id=unlinked_call, user_text=f"{name} again", bot_text="Hi"),
         *(Message(conversation_id=c, role=role, text=f"{name} said something")
           for c in (*conversations, anonymous) for role in ("user", "assistant")),
         InboundMessage(channel="whatsapp", external_id=f"wamid.{name}", sender=wa_id, text=f"Hi from {name}",
                        conversation_id=whatsapp),
         InboundMessage(channel="whatsapp", external_id=f"wamid.{name}.2", sender=wa_id, text="a second one"),
         EmailReceipt(sender=email, message_id=f"<{name}@mail>", status="answered"),
         FlowRun(flow_name="booking", channel="chat", conversation_id=chat, contact_id=contact_id, step="ask",
                 variables={"name": name}))
    assert mail
    # A photo they sent on WhatsApp, kept in the conversation's media folder.
    photo = attachments.keep(api.settings.media_dir, whatsapp, "me.jpg", "image/jpeg", f"{name} photo".encode())
    _add(engine, Message(conversation_id=whatsapp, role="user", text="", attachments=[photo.to_dict()]))
    return Person(contact_id, conversations, call_id, recording)


def remaining(engine: Engine, text: str) -> dict[str, int]:
    """How many rows anywhere still mention ``text`` (names are unique per seeded person)."""
    with session_scope(engine) as session:
        return {
            "contacts": len(session.exec(select(Contact).where(col(Contact.name) == text)).all()),
            "conversations": len(session.exec(select(Conversation).where(
                col(Conversation.external_id).startswith(text))).all()),
            "messages": len(session.exec(select(Message).where(col(Message.text).contains(text))).all()),
            "calls": len(session.exec(select(Call).where(col(Call.channel_id).startswith(text))).all()),
            "call_turns": len(session.exec(select(CallTurn).where(col(CallTurn.user_text).contains(text))).all()),
            "inbound": len(session.exec(select(InboundMessage).where(
                col(InboundMessage.external_id).startswith(f"wamid.{text}"))).all()),
            "receipts": len(session.exec(select(EmailReceipt).where(
                col(EmailReceipt.message_id) == f"<{text}@mail>")).all()),
            "flow_runs": len([r for r in session.exec(select(FlowRun)).all() if r.variables.get("name") == text]),
        }


ALL_THERE = {"contacts": 1, "conversations": 5, "messages": 10, "calls": 2, "call_turns": 2, "inbound": 2,
             "receipts": 1, "flow_runs": 1}


async def test_erasing_a_contact_removes_every_trace_and_only_theirs(api_db: Api) -> None:
    api = api_db
    ada = seed_person(api, "ada", "+15550100001", "ada@example.org", "15550100001")
    bob = seed_person(api, "bob", "+15550100002", "bob@example.org", "15550100002")
    assert remaining(api.engine, "ada") == ALL_THERE == remaining(api.engine, "bob")

    for role in ("viewer", "designer"):
        status, error = await api.call("DELETE", f"/api/v1/contacts/{ada.contact_id}", role=role)
        assert (status, error["error"]["code"]) == (403, "forbidden")
    status, report = await api.call("DELETE", f"/api/v1/contacts/{ada.contact_id}", role="admin")
    assert status == 200, report
    assert report["erased"] == {"call_turns": 2, "flow_runs": 1, "inbound_messages": 2, "calls": 2, "messages": 11,
                                "conversations": 5, "email_receipts": 1, "recordings": 1, "media_folders": 1,
                                "campaign_entries": 0}
    assert report["recordings_not_deleted"] == 0
    assert remaining(api.engine, "ada") == dict.fromkeys(ALL_THERE, 0)
    assert not ada.recording.exists()
    assert not (api.settings.media_dir / str(ada.conversations[1])).exists()  # the photo folder is gone
    # The other person is untouched, recording and photo included.
    assert remaining(api.engine, "bob") == ALL_THERE and bob.recording.exists()
    assert (api.settings.media_dir / str(bob.conversations[1])).is_dir()
    status, _ = await api.call("GET", f"/api/v1/contacts/{ada.contact_id}", role="viewer")
    assert status == 404
    status, _ = await api.call("DELETE", f"/api/v1/contacts/{ada.contact_id}", role="admin")
    assert status == 404

    # The audit row says who erased which id and how much, never who the person was.
    status, trail = await api.call("GET", "/api/v1/audit?action=contact.erase", role="admin")
    assert status == 200 and trail["total"] == 1
    event = trail["items"][0]
    assert (event["subject"], event["actor"]) == (f"contact:{ada.contact_id}", f"user:{api.users['admin']} admin")
    assert event["details"]["messages"] == 11
    assert not any(secret in str(event) for secret in ("ada", "15550100001"))
    assert (await api.call("GET", "/api/v1/audit", role="designer"))[0] == 403


async def test_a_shared_number_erases_only_the_persons_own_calls_and_never_a_live_one(api: Api) -> None:
    ada = seed_person(api, "ada", "+15550100001", "ada@example.org", "15550100001")
    # The office line: Ada's number, but this call was Bob's (a verified caller of his own contact).
    with session_scope(api.engine) as session:
        bob = Contact(name="bob", phone="+15550100002", phone_verified=True)
        session.add(bob)
        session.flush()
        theirs = Conversation(channel="voice", contact_id=bob.id, external_id="bob-office")
        session.add(theirs)
        session.flush()
        session.add(Call(channel_id="bob-office", caller="+1 555 010 0001", conversation_id=theirs.id,
                         outcome="completed"))
        live = Call(channel_id="ada-live", caller="0015550100001", outcome="active")  # Ada, on the phone now
        session.add(live)
        session.flush()
        live_id = live.id
    status, error = await api.call("DELETE", f"/api/v1/contacts/{ada.contact_id}", role="admin")
    assert (status, error["error"]["code"]) == (409, "contact_on_call")
    assert remaining(api.engine, "ada")["calls"] == 3  # nothing was erased
    with session_scope(api.engine) as session:
        call = session.get(Call, live_id)
        assert call is not None
        call.outcome = "completed"
        session.add(call)
    status, report = await api.call("DELETE", f"/api/v1/contacts/{ada.contact_id}", role="admin")
    assert status == 200 and report["erased"]["calls"] == 3, report  # her two calls and the one that ended
    assert remaining(api.engine, "ada") == dict.fromkeys(ALL_THERE, 0)
    assert remaining(api.engine, "bob")["calls"] == 1  # Bob's call from her number is his


async def test_a_recording_link_is_removed_not_followed(api: Api, tmp_path: Path) -> None:
    person = seed_person(api, "eve", "+15550100003", "eve@example.org", "15550100003")
    outside = tmp_path / "precious.wav"
    outside.write_bytes(b"not Eva's")
    person.recording.unlink()
    os.symlink(outside, person.recording)  # Asterisk's uid could plant such a link in its recordings folder
    status, report = await api.call("DELETE", f"/api/v1/contacts/{person.contact_id}", role="admin")
    assert status == 200, report
    assert not person.recording.is_symlink() and not person.recording.exists()
    assert outside.read_bytes() == b"not Eva's"


async def test_search_detail_and_conversations(api_db: Api) -> None:
    api = api_db
    ada = seed_person(api, "ada", "+15550100001", "ada@example.org", "15550100001")
    seed_person(api, "bob", "+15550100002", "bob@example.org", "15550100002")
    for q, names in (("ADA@", ["ada"]), ("555010000", ["bob", "ada"]), ("100002", ["bob"]), ("%", []),
                     ("_", []), ("nobody", [])):
        status, page = await api.call("GET", "/api/v1/contacts", role="viewer", params={"q": q})
        assert status == 200, page
        assert [c["name"] for c in page["items"]] == names, q
    status, detail = await api.call("GET", f"/api/v1/contacts/{ada.contact_id}", role="viewer")
    assert status == 200
    assert detail["conversations"] == {"voice": 1, "whatsapp": 1, "email": 1, "chat": 1}
    assert (detail["phone"], detail["phone_verified"], detail["whatsapp_id"]) == ("+15550100001", True,
                                                                                  "15550100001")
    status, page = await api.call("GET", f"/api/v1/contacts/{ada.contact_id}/conversations?limit=3", role="viewer")
    assert status == 200 and page["total"] == 4 and len(page["items"]) == 3
    assert {c["id"] for c in page["items"]} <= set(ada.conversations)
    status, page = await api.call("GET", "/api/v1/contacts?limit=1&offset=1", role="viewer")
    assert (page["total"], [c["name"] for c in page["items"]]) == (2, ["ada"])
    assert (await api.call("GET", "/api/v1/contacts/999/conversations", role="viewer"))[0] == 404


async def test_changing_a_contact(api_db: Api) -> None:
    api = api_db
    ada = seed_person(api, "ada", "+15550100001", "ada@example.org", "15550100001")
    seed_person(api, "bob", "+15550100002", "bob@example.org", "15550100002")
    path = f"/api/v1/contacts/{ada.contact_id}"
    status, changed = await api.call("PATCH", path, role="designer",
                                     json={"name": "Ada L.", "email": "ADA@Example.ORG "})
    assert status == 200, changed
    assert (changed["name"], changed["email"], changed["phone_verified"]) == ("Ada L.", "ada@example.org", True)
    # A number typed by a person is not attested by a trunk: it no longer opens WhatsApp memory.
    status, changed = await api.call("PATCH", path, role="designer", json={"phone": "+1 (555) 010-0009"})
    assert (status, changed["phone"], changed["phone_verified"]) == (200, "+15550100009", False)
    cases = [({"email": "bob@example.org"}, 409, "email"), ({"phone": "+15550100002"}, 409, "phone"),
             ({"email": "not an address"}, 422, "email"), ({"phone": "call me"}, 422, "phone"),
             ({"phone": None, "email": None, "whatsapp_id": None}, 422, "phone"), ({"name": None}, 422, "name"),
             ({"name": "x" * 201}, 422, "name"), ({"id": 5}, 422, "id")]
    for body, expected, field in cases:
        status, error = await api.call("PATCH", path, role="designer", json=body)
        assert (status, error["error"]["field"]) == (expected, field), body
    assert (await api.call("PATCH", path, role="viewer", json={"name": "x"}))[0] == 403
    status, kept = await api.call("GET", path, role="viewer")
    assert (kept["name"], kept["email"], kept["phone"]) == ("Ada L.", "ada@example.org", "+15550100009")
    status, changed = await api.call("PATCH", path, role="designer", json={"whatsapp_id": None})
    assert (status, changed["whatsapp_id"]) == (200, None)


async def test_merging_two_contacts(api_db: Api) -> None:
    api = api_db
    with session_scope(api.engine) as session:
        phone_only = Contact(name="Caller", phone="+15550100007", phone_verified=True)
        mail_only = Contact(name="", email="cat@example.org")
        session.add(phone_only)
        session.add(mail_only)
        session.flush()
        keep, fold = phone_only.id, mail_only.id
        for contact_id, channel in ((keep, "voice"), (fold, "email"), (fold, "chat")):
            session.add(Conversation(channel=channel, contact_id=contact_id))
        session.add(FlowRun(flow_name="x", channel="email", contact_id=fold, step="a"))
    assert keep is not None and fold is not None
    path = f"/api/v1/contacts/{keep}/merge"
    assert (await api.call("POST", path, role="designer", json={"from_contact_id": fold}))[0] == 403
    for body, field in (({"from_contact_id": keep}, "from_contact_id"), ({"from_contact_id": 999}, "from_contact_id")):
        status, error = await api.call("POST", path, role="admin", json=body)
        assert (status, error["error"]["field"]) == (422, field)
    status, merged = await api.call("POST", path, role="admin", json={"from_contact_id": fold})
    assert status == 200, merged
    assert merged["moved"] == {"conversations": 2, "flow_runs": 1, "campaign_entries": 0}
    contact = merged["contact"]
    assert (contact["id"], contact["phone"], contact["phone_verified"], contact["email"]) == (
        keep, "+15550100007", True, "cat@example.org")
    assert contact["conversations"] == {"voice": 1, "email": 1, "chat": 1}
    assert (await api.call("GET", f"/api/v1/contacts/{fold}", role="viewer"))[0] == 404
    with session_scope(api.engine) as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "contact.merge")).one()
        assert event.subject == f"contact:{keep}" and event.details is not None
        assert event.details["from_contact_id"] == fold and event.details["identifiers_taken"] == ["email"]
