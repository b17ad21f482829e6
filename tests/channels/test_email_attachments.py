"""E-mail attachments and per-agent addresses against real mail servers: aiosmtpd (SMTP) relaying into dovecot
(IMAP), so a sent attachment is fetched back from a real mailbox; inbound mail put into the inbox by IMAP APPEND.
A scripted model answers (the mechanics are the point).  The attachment parser is fuzzed at the end."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import select

from channels import attachments, store
from channels.email.message import (
    MAX_ATTACHMENTS,
    MAX_LISTED_ATTACHMENTS,
    InboundEmail,
    parse_email,
)
from channels.email.parse_worker import ParseWorker, mail_from_wire, mail_to_wire
from channels.email.transport import ImapMailbox
from models import Agent, Conversation, Message
from models.db import session_scope
from tests.api.conftest import Api, offline_settings, start_api
from tests.channels.conftest import Dovecot, KeepMessages, SmtpSink, free_port, plain_of
from tests.channels.test_email_fuzz import ENCODINGS, header_lines, leaves, multiparts
from tests.channels.test_email_service import EVA, Mail, make_mail
from voicebot.agent import store as agent_store

PDF = b"%PDF-1.4\n" + os.urandom(15_000)
LOGO = b"\x89PNG\r\n\x1a\n" + os.urandom(300)


# ---------------------------------------------------------------------------------------------- fixtures
class Relay(KeepMessages):
    """Keeps each accepted message like the sink, and delivers its bytes as received into dovecot: the mailbox of
    the recipient's local part (a real SMTP → IMAP path)."""

    def __init__(self, sink: SmtpSink, dovecot: Dovecot) -> None:
        super().__init__(sink)
        self.dovecot = dovecot

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        for recipient in envelope.rcpt_tos:
            await asyncio.to_thread(self.dovecot.deliver, recipient.split("@", 1)[0], raw)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def relay(dovecot: Dovecot) -> Iterator[SmtpSink]:
    sink = SmtpSink("127.0.0.1", free_port())
    controller = Controller(Relay(sink, dovecot), hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@dataclass
class World:
    box: Mail
    api: Api

    @property
    def media(self) -> Path:
        return self.box.service.settings.media_dir


@pytest.fixture
async def world(sqlite_db: Engine, dovecot: Dovecot, relay: SmtpSink, tmp_path: Path) -> AsyncIterator[World]:
    box = make_mail(sqlite_db, dovecot, relay, tmp_path, email_attachment_max_bytes=20_000)
    api = await start_api(box.service.settings, sqlite_db, offline_asterisk=True, email=box.service)
    yield World(box, api)
    await api.client.close()
    await box.service.close()


def add_agent(engine: Engine, **fields: Any) -> Agent:
    with session_scope(engine) as session:
        return agent_store.create_agent(session, fields)


def inbound(body: str, *, message_id: str, to: str = f"Eva <{EVA}>", sender: str = "Ada <ada@example.org>",
            **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Invoice"
    message["Message-ID"] = message_id
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def imap_messages(dovecot: Dovecot, user: str) -> list[EmailMessage]:
    """Every message in ``user``'s inbox, fetched with Eva's own IMAP client."""
    mailbox = ImapMailbox(dovecot.host, dovecot.port, user, dovecot.password, use_ssl=False, timeout=10)
    with mailbox:
        raws = [mailbox.fetch(uid) for uid in mailbox.unseen()]
    parsed = [message_from_bytes(raw, policy=policy.default) for raw in raws if raw is not None]
    return [m for m in parsed if isinstance(m, EmailMessage)]


async def download(api: Api, message_id: int, index: int) -> tuple[int, dict[str, str], bytes]:
    response = await api.client.get(f"/api/v1/messages/{message_id}/attachments/{index}", headers=api.auth("viewer"))
    return response.status, dict(response.headers), await response.read()


def user_messages(box: Mail) -> list[Message]:
    return [m for m in box.rows(Message) if m.role == "user"]


# ---------------------------------------------------------------------------------------------- attachments out
async def test_sent_attachments_arrive_through_smtp_and_imap_byte_for_byte(world: World) -> None:
    to = f"bob-{uuid.uuid4().hex[:8]}"
    csv = "name;amount\nMärz;12\n".encode()
    status, sent = await world.api.call("POST", "/api/v1/email/send", role="designer", json={
        "to": f"{to}@example.org", "subject": "Your invoice", "body": "Attached.", "html": True,
        "attachments": [
            {"filename": "invoice.pdf", "content_type": "application/pdf",
             "content_base64": base64.b64encode(PDF).decode()},
            {"filename": "Rechnung März.csv", "content_type": "text/csv",
             "content_base64": base64.b64encode(csv).decode()},
        ]})
    assert status == 200, sent
    (fetched,) = imap_messages(world.box.dovecot, to)
    assert fetched["Message-ID"] == sent["message_id"]
    assert plain_of(fetched).strip() == "Attached."
    assert fetched.get_body(("html",)) is not None  # the HTML alternative travels beside the files
    files = [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in fetched.iter_attachments()]
    assert files == [("invoice.pdf", "application/pdf", PDF), ("Rechnung März.csv", "text/csv", csv)]

    # The stored message lists them, kept in the conversation's folder.
    stored = next(m for m in world.box.rows(Message) if m.id == sent["stored_message_id"])
    assert [(a["name"], a["sha256"], a["size"]) for a in stored.attachments or []] == [
        ("invoice.pdf", hashlib.sha256(PDF).hexdigest(), len(PDF)),
        ("Rechnung März.csv", hashlib.sha256(csv).hexdigest(), len(csv))]
    kept = attachments.kept_path(world.media, attachments.Attachment.from_dict((stored.attachments or [])[0]))
    assert kept.read_bytes() == PDF and kept.parent.name == str(sent["conversation_id"])
    status, headers, data = await download(world.api, sent["stored_message_id"], 1)
    assert (status, data, headers["Content-Type"]) == (200, csv, "text/csv")
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"Rechnung M_rz.csv\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.csv")


async def test_sent_attachments_are_bounded(world: World) -> None:
    def send(files: list[dict[str, str]]) -> dict[str, Any]:
        return {"to": "bob@example.org", "subject": "s", "body": "b", "attachments": files}

    one = {"filename": "a.txt", "content_type": "text/plain", "content_base64": "aGk="}
    status, body = await world.api.call("POST", "/api/v1/email/send", role="designer", json=send([one] * 11))
    assert status == 422, body
    too_big = {**one, "content_base64": base64.b64encode(b"x" * 20_001).decode()}  # over the 20,000 of this world
    status, body = await world.api.call("POST", "/api/v1/email/send", role="designer", json=send([too_big]))
    assert (status, body["error"]["code"]) == (422, "attachments_too_large")
    status, body = await world.api.call("POST", "/api/v1/email/send", role="designer",
                                        json=send([{**one, "content_base64": "not base64!"}]))
    assert (status, body["error"]["field"]) == (422, "attachments.0.content_base64")
    for content_type in ("text/plain; charset=utf-8", "text/plain\r\nBcc: x@evil.example", "text", "a/b/c"):
        status, body = await world.api.call("POST", "/api/v1/email/send", role="designer",
                                            json=send([{**one, "content_type": content_type}]))
        assert status == 422, (content_type, body)
    assert world.box.sink.messages == []


# ---------------------------------------------------------------------------------------------- attachments in
async def test_inbound_attachments_are_kept_listed_named_to_the_agent_and_downloadable(world: World) -> None:
    box = world.box
    big = os.urandom(30_000)  # over this world's 20,000 bytes per attachment
    message = inbound("Please see the invoice.", message_id="<inv@example.org>")
    message.add_alternative("<p>Please see the invoice.</p><img src=\"cid:logo@example.org\">", subtype="html")
    html_part = message.get_body(("html",))
    assert html_part is not None
    html_part.add_related(LOGO, maintype="image", subtype="png", cid="<logo@example.org>", filename="logo.png",
                          disposition="inline")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice.pdf")
    message.add_attachment(big, maintype="application", subtype="octet-stream", filename="big.bin")
    message.add_attachment(b"<script>alert(1)</script>", maintype="text", subtype="html", filename="page.html")
    box.deliver(message.as_bytes())
    result = await box.service.poll_once()
    assert result.answered == 1, result

    (user,) = user_messages(box)
    listed = user.attachments or []
    assert [(a["name"], a["content_type"], a["size"], a.get("note", "")) for a in listed] == [
        ("invoice.pdf", "application/pdf", len(PDF), ""),
        ("big.bin", "application/octet-stream", len(big), "too_large"),
        ("page.html", "text/html", 25, ""), ("logo.png", "image/png", len(LOGO), "inline")]
    assert listed[1]["sha256"] == hashlib.sha256(big).hexdigest() and "path" not in listed[1]
    for row, data in ((listed[0], PDF), (listed[3], LOGO)):
        kept = attachments.kept_path(world.media, attachments.Attachment.from_dict(row))
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest() == row["sha256"]
        assert kept.parent.name == str(user.conversation_id) and oct(kept.stat().st_mode & 0o777) == "0o600"

    # The agent read the names of what the sender attached (not the inline logo), never the bytes.
    said = [m.content for m in box.llm.calls[0] if m.role == "user"][-1]
    assert said == "Please see the invoice.\n\n(attached: invoice.pdf, big.bin, page.html)"
    assert user.text == said
    assert "PDF-1.4" not in "".join(m.content for m in box.llm.calls[0])

    status, headers, data = await download(world.api, user.id or 0, 0)
    assert (status, data) == (200, PDF)
    assert headers["Content-Type"] == "application/pdf" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"] == "attachment; filename=\"invoice.pdf\"; filename*=UTF-8''invoice.pdf"
    status, headers, data = await download(world.api, user.id or 0, 2)  # HTML is never served as HTML
    assert (status, headers["Content-Type"], data) == (200, "application/octet-stream", b"<script>alert(1)</script>")
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    status, headers, data = await download(world.api, user.id or 0, 1)  # listed, not kept
    assert (status, json.loads(data)["error"]["code"]) == (404, "attachment_not_kept")
    status, _headers, data = await download(world.api, user.id or 0, 4)
    assert (status, json.loads(data)["error"]["code"]) == (404, "attachment_not_found")
    response = await world.api.client.get(f"/api/v1/messages/{user.id}/attachments/0")
    assert response.status == 401


async def test_a_mail_of_only_an_attachment_is_answered_and_many_are_bounded(world: World) -> None:
    box = world.box
    message = EmailMessage()
    message["From"], message["To"], message["Message-ID"] = "ada@example.org", EVA, "<many@example.org>"
    message.set_content("")
    for number in range(MAX_LISTED_ATTACHMENTS + 5):
        message.add_attachment(f"file {number}".encode(), maintype="application", subtype="octet-stream",
                               filename=f"f{number}.bin")
    box.deliver(message.as_bytes())
    assert (await box.service.poll_once()).answered == 1
    (user,) = user_messages(box)
    listed = user.attachments or []
    assert len(listed) == MAX_LISTED_ATTACHMENTS
    assert [a.get("note", "") for a in listed] == [""] * MAX_ATTACHMENTS + ["too_many"] * (
        MAX_LISTED_ATTACHMENTS - MAX_ATTACHMENTS)
    assert sum(1 for a in listed if a.get("path")) == MAX_ATTACHMENTS
    assert user.text.startswith("(attached: f0.bin, f1.bin") and user.text.endswith(" and 40 more)")


HOSTILE_NAMES = {
    "../../etc/passwd": "passwd",
    "..\\..\\windows\\win.ini": "win.ini",
    "a\r\nBcc: mallory@evil.example.txt": "aBcc mallory@evil.example.txt",
    "Rechnung \u202efdp.exe": "Rechnung fdp.exe",
    "x" * 1000 + ".pdf": "x" * 116 + ".pdf",
    "..": "attachment.bin",
}


async def test_hostile_file_names_stay_only_data(world: World) -> None:
    box = world.box
    boundary = "b0undary"
    parts = []
    for number, name in enumerate(HOSTILE_NAMES):
        encoded = "".join(f"%{byte:02X}" for byte in name.encode())
        parts.append(f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Disposition: attachment; filename*=utf-8''{encoded}\r\n"
                     f"Content-Transfer-Encoding: base64\r\n\r\n"
                     f"{base64.b64encode(b'payload %d' % number).decode()}\r\n")
    raw = (f"From: ada@example.org\r\nTo: {EVA}\r\nMessage-ID: <names@example.org>\r\nSubject: names\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
           f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nSee the files.\r\n" + "".join(parts)
           + f"--{boundary}--\r\n").encode()
    box.deliver(raw)
    assert (await box.service.poll_once()).answered == 1
    (user,) = user_messages(box)
    listed = user.attachments or []
    assert [a["name"] for a in listed] == list(HOSTILE_NAMES.values())
    for index, row in enumerate(listed):
        assert re.fullmatch(rf"{user.conversation_id}/[0-9a-f]{{64}}\.bin", row["path"]), row["path"]
        status, headers, data = await download(world.api, user.id or 0, index)
        assert (status, data) == (200, b"payload %d" % index)
        disposition = headers["Content-Disposition"]
        assert "\r" not in disposition and "\n" not in disposition and disposition.count('"') == 2
        assert disposition.startswith("attachment; filename=")
    # Every file written is in the conversation's folder, named by its hash: nothing climbed out.
    written = await asyncio.to_thread(lambda: sorted(p for p in world.media.rglob("*") if p.is_file()))
    assert len(written) == len(HOSTILE_NAMES)
    assert all(p.parent == world.media / str(user.conversation_id) for p in written), written
    root = box.service.settings.data_dir.parent
    everything = await asyncio.to_thread(lambda: {p.name for p in root.rglob("*")})
    assert not everything & {"passwd", "win.ini", "fdp.exe"}

    # Out, the same names are cleaned before they reach a header: one part, one file name, no injected header.
    to = f"carol-{uuid.uuid4().hex[:8]}"
    status, sent = await world.api.call("POST", "/api/v1/email/send", role="designer", json={
        "to": f"{to}@example.org", "subject": "names", "body": "b",
        "attachments": [{"filename": name[:255], "content_base64": "aGk="} for name in HOSTILE_NAMES]})
    assert status == 200, sent
    (fetched,) = imap_messages(world.box.dovecot, to)
    assert "Bcc" not in fetched and len(world.box.sink.envelopes[-1][1]) == 1
    names = [str(p.get_filename()) for p in fetched.iter_attachments()]
    assert names == [attachments.clean_name(n[:255], fallback="attachment") for n in HOSTILE_NAMES]
    assert names[4] == "x" * attachments.MAX_NAME  # the 255 characters a request may send, cleaned
    assert all("/" not in n and "\\" not in n and not any(unicodedata.category(c)[0] == "C" for c in n)
               for n in names)


# ---------------------------------------------------------------------------------------------- per-agent addresses
async def test_mail_to_an_agent_address_is_answered_by_that_agent_from_it(world: World) -> None:
    box = world.box
    add_agent(box.engine, name="sales", email_address="sales@shop.example", persona="You are the sales desk.",
              email_signature="The sales desk")
    add_agent(box.engine, name="old", email_address="old@shop.example", active=False)
    box.deliver(inbound("Prices?", message_id="<s1@example.org>", to="Sales <sales@shop.example>").as_bytes())
    box.deliver(inbound("Opening hours?", message_id="<e1@example.org>").as_bytes())
    box.deliver(inbound("Loop?", message_id="<l1@shop.example>", sender="Sales <sales@shop.example>").as_bytes())
    box.deliver(inbound("Loop?", message_id="<l2@shop.example>", sender="old@shop.example").as_bytes())
    box.deliver(inbound("Anyone?", message_id="<o1@example.org>", to="old@shop.example").as_bytes())
    box.deliver(inbound("Bcc'd", message_id="<d1@example.org>", to="undisclosed-recipients:;",
                        Delivered_To="sales@shop.example").as_bytes())
    box.deliver(inbound("Cc'd", message_id="<c1@example.org>", to="someone@else.example",
                        Cc="Sales <SALES@shop.example>").as_bytes())
    result = await box.service.poll_once()
    assert (result.answered, result.skipped) == (5, 2), result

    with session_scope(box.engine) as session:
        agents = {a.id: a.name for a in session.exec(select(Agent)).all()}
        answered_by = {c.external_id: agents[c.agent_id or 0] for c in session.exec(select(Conversation)).all()}
    assert answered_by == {"<s1@example.org>": "sales", "<e1@example.org>": "demo", "<o1@example.org>": "demo",
                           "<d1@example.org>": "sales", "<c1@example.org>": "sales"}
    replies = {m["In-Reply-To"]: m for m in box.sink.messages}
    envelopes = {m["In-Reply-To"]: e for e, m in zip(box.sink.envelopes, box.sink.messages, strict=True)}
    for message_id in ("<s1@example.org>", "<d1@example.org>", "<c1@example.org>"):
        reply = replies[message_id]
        assert reply["From"] == "Eva <sales@shop.example>" and envelopes[message_id][0] == "sales@shop.example"
        assert reply["Message-ID"].endswith("@shop.example>")
        assert plain_of(reply).rstrip().endswith("-- \nThe sales desk")
    for message_id in ("<e1@example.org>", "<o1@example.org>"):
        assert replies[message_id]["From"] == f"Eva <{EVA}>"
    personas = {calls[0].content for calls in box.llm.calls}
    assert "You are the sales desk." in personas


async def test_agent_addresses_are_normalised_and_unique(world: World) -> None:
    api = world.api
    status, first = await api.call("POST", "/api/v1/agents", role="designer",
                                   json={"name": "desk", "email_address": "Desk@Shop.Example"})
    assert (status, first["email_address"]) == (201, "desk@shop.example"), first
    status, refused = await api.call("POST", "/api/v1/agents", role="designer",
                                     json={"name": "desk2", "email_address": "desk@shop.example"})
    assert (status, refused["error"]["code"], refused["error"]["field"]) == (409, "email_address_taken",
                                                                            "email_address")
    status, second = await api.call("POST", "/api/v1/agents", role="designer", json={"name": "desk2"})
    assert (status, second["email_address"]) == (201, None)
    status, refused = await api.call("PATCH", f"/api/v1/agents/{second['id']}", role="designer",
                                     json={"email_address": "DESK@shop.example"})
    assert (status, refused["error"]["code"]) == (409, "email_address_taken")
    status, same = await api.call("PATCH", f"/api/v1/agents/{first['id']}", role="designer",
                                  json={"email_address": "DESK@shop.example", "description": "kept"})
    assert (status, same["email_address"]) == (200, "desk@shop.example")  # its own address is no clash
    status, cleared = await api.call("PATCH", f"/api/v1/agents/{first['id']}", role="designer",
                                     json={"email_address": None})
    assert (status, cleared["email_address"]) == (200, None)
    status, moved = await api.call("PATCH", f"/api/v1/agents/{second['id']}", role="designer",
                                   json={"email_address": "desk@shop.example"})
    assert (status, moved["email_address"]) == (200, "desk@shop.example")
    for bad in ("not an address", "a@b", "x\r\n@shop.example"):
        status, _body = await api.call("POST", "/api/v1/agents", role="designer",
                                       json={"name": "bad", "email_address": bad})
        assert status == 422, bad


async def test_chat_and_send_choose_the_agent(world: World) -> None:
    api, box = world.api, world.box
    add_agent(box.engine, name="sales", email_address="sales@shop.example", email_signature="The sales desk")
    add_agent(box.engine, name="resting", email_address="resting@shop.example", active=False)
    status, chat = await api.call("POST", "/api/v1/email/chat", role="designer",
                                  json={"email": "carol@example.org", "message": "Prices?", "agent": "sales"})
    assert status == 200, chat
    status, sent = await api.call("POST", "/api/v1/email/send", role="designer", json={
        "to": "dave@example.org", "subject": "Offer", "body": "Here it is.", "html": True, "agent": "sales"})
    assert status == 200, sent
    first, second = box.sink.messages
    assert (first["From"], first["Message-ID"]) == ("Eva <sales@shop.example>", chat["message_id"])
    assert second["From"] == "Eva <sales@shop.example>"
    assert plain_of(second) == "Here it is.\n\n-- \nThe sales desk\n"
    html = second.get_body(("html",))
    assert html is not None and "The sales desk" in str(html.get_content())
    stored = next(m for m in box.rows(Message) if m.id == sent["stored_message_id"])
    assert stored.text == "Here it is."  # the stored message is the words, without the signature
    with session_scope(box.engine) as session:
        sales = session.exec(select(Agent).where(Agent.name == "sales")).one()
        assert {c.agent_id for c in session.exec(select(Conversation)).all()} == {sales.id}
    for path, body in (("/api/v1/email/chat", {"email": "c@example.org", "message": "x", "agent": "nobody"}),
                       ("/api/v1/email/send", {"to": "c@example.org", "subject": "s", "body": "b", "agent": "nobody"}),
                       ("/api/v1/email/chat", {"email": "c@example.org", "message": "x", "agent": "resting"})):
        status, refused = await api.call("POST", path, role="designer", json=body)
        assert status == 422 and refused["error"]["field"] == "agent", refused
        assert refused["error"]["code"] == ("agent_inactive" if body.get("agent") == "resting" else "agent_not_found")
    assert len(box.sink.messages) == 2


# ---------------------------------------------------------------------------------------------- download refusals
async def test_download_serves_only_files_kept_for_that_message(sqlite_db: Engine, tmp_path: Path) -> None:
    settings = offline_settings(tmp_path / "data")
    media = settings.media_dir
    with session_scope(sqlite_db) as session:
        ours = store.new_conversation(session, "email", None, None, "<a@x>")
        theirs = store.new_conversation(session, "email", None, None, "<b@x>")
        message_id = store.add_message(session, ours, "user", "hi")
    own = attachments.keep(media, ours, "own.pdf", "application/pdf", b"own")
    other = attachments.keep(media, theirs, "other.pdf", "application/pdf", b"someone else's")
    gone = attachments.keep(media, ours, "gone.pdf", "application/pdf", b"gone")
    (media / gone.path).unlink()
    linked = attachments.keep(media, ours, "link.txt", "text/plain", b"link")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (media / linked.path).unlink()
    (media / linked.path).symlink_to(secret)
    rows: list[Any] = [own.to_dict(), other.to_dict(), gone.to_dict(), linked.to_dict(),
            {**own.to_dict(), "path": "../../secret.txt"}, {**own.to_dict(), "path": f"{ours}/../../secret.txt"},
            "not a row"]
    with session_scope(sqlite_db) as session:
        row = session.get(Message, message_id)
        assert row is not None
        row.attachments = rows
        session.add(row)
    api = await start_api(settings, sqlite_db, offline_asterisk=True)
    try:
        status, _headers, data = await download(api, message_id, 0)
        assert (status, data) == (200, b"own")
        expected = ["attachment_not_kept", "attachment_not_found", "attachment_not_found", "attachment_not_kept",
                    "attachment_not_kept", "attachment_not_found"]
        for index, code in enumerate(expected, start=1):
            status, _headers, data = await download(api, message_id, index)
            assert (status, json.loads(data)["error"]["code"]) == (404, code), index
        for path in (f"/api/v1/messages/{message_id}/attachments/-1", f"/api/v1/messages/{message_id}/attachments/x",
                     "/api/v1/messages/999999/attachments/0"):
            response = await api.client.get(path, headers=api.auth("viewer"))
            assert response.status == 404, path
    finally:
        await api.client.close()


# ---------------------------------------------------------------------------------------------- the parser child
async def test_the_parser_child_returns_the_kept_bytes() -> None:
    large = os.urandom(3 * 1024 * 1024)
    message = inbound("Two files.", message_id="<big@example.org>")
    message.add_attachment(large, maintype="application", subtype="zip", filename="photos.zip")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice.pdf")
    async with ParseWorker(attachment_max_bytes=4 * 1024 * 1024) as worker:
        parsed = await worker.parse(message.as_bytes())
    assert [(a.name, a.data) for a in parsed.attachments] == [("photos.zip", large), ("invoice.pdf", PDF)]
    async with ParseWorker(attachment_max_bytes=1024 * 1024) as worker:
        parsed = await worker.parse(message.as_bytes())
    (photos, invoice) = parsed.attachments
    assert (photos.data, photos.note, photos.size, photos.sha256) == (
        None, "too_large", len(large), hashlib.sha256(large).hexdigest())
    assert invoice.data == PDF


# ---------------------------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILENAMES = st.one_of(st.none(), st.text(max_size=30), st.sampled_from([
    "../../etc/passwd", "a\r\nBcc: x@evil.example", "=?utf-8?b?w6Q=?=", "x" * 3000, "\u202eexe.pdf", ".", "..", "",
    "\x00", "con", "a/b\\c", '"quoted"', "=?x-unknown?q?abc?=",
]))
DISPOSITIONS = st.sampled_from([
    "", "attachment", "inline", "attachment; filename", "bogus", "attachment; filename*=utf-8''%E2%80%AE%0D%0Ax",
    "attachment; filename*0=a; filename*1=b.txt", "attachment; filename*=x-unknown''%FF", "attachment;;;",
    "attachment; filename*=utf-8'", "inline; filename=\"logo.png\"",
])
TYPES = st.sampled_from([
    "application/pdf", "image/png", "text/plain", "text/html", "application/octet-stream", "message/rfc822",
    "x/y", "garbage", "", 'image/png; name="a.png"', "multipart/mixed", "APPLICATION/PDF", "text/plain; name=",
    "message/delivery-status",
])


@st.composite
def attachment_parts(draw: st.DrawFn) -> bytes:
    disposition, name, encoding = draw(DISPOSITIONS), draw(FILENAMES), draw(ENCODINGS)
    body = draw(st.binary(max_size=400))
    if encoding == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body)
    head = [("Content-Type", draw(TYPES))]
    if disposition or name is not None:
        head.append(("Content-Disposition", disposition + (f'; filename="{name}"' if name is not None else "")))
    if encoding:
        head.append(("Content-Transfer-Encoding", encoding))
    if draw(st.booleans()):
        head.append(("Content-ID", draw(st.sampled_from(["<logo@x>", "", "<", "x"]))))
    return header_lines(head) + b"\r\n" + body


PARTS = st.recursive(st.one_of(leaves(), attachment_parts()), multiparts, max_leaves=24)


@st.composite
def mails(draw: st.DrawFn) -> bytes:
    head = header_lines([("From", "Ada <ada@example.org>"), ("To", draw(st.sampled_from([
        "eva@shop.example", "a@b.c, , <>", "=?utf-8?q?x?= <x@y.z>", "undisclosed-recipients:;", "\x00@x"]))),
        ("Message-ID", "<fuzz@example.org>"), ("MIME-Version", "1.0")])
    many = draw(st.integers(min_value=0, max_value=3)) == 3
    if many:  # now and then a flat mixed of very many small parts
        count = draw(st.integers(min_value=20, max_value=120))
        body = b"".join(b"--m\r\n" + draw(attachment_parts()) + b"\r\n" for _ in range(count)) + b"--m--\r\n"
        return head + b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n' + body
    return head + draw(PARTS)


def assert_bounded_attachments(parsed: InboundEmail, max_each: int, max_total: int) -> None:
    assert len(parsed.attachments) <= MAX_LISTED_ATTACHMENTS
    kept = [a for a in parsed.attachments if a.data is not None]
    assert len(kept) <= MAX_ATTACHMENTS and sum(a.size for a in kept) <= max_total
    for found in parsed.attachments:
        assert 1 <= len(found.name) <= attachments.MAX_NAME
        assert "/" not in found.name and "\\" not in found.name
        assert not any(unicodedata.category(c)[0] == "C" for c in found.name)
        assert re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}", found.content_type)
        assert found.note in ("", "inline", "too_large", "too_many", "unreadable")
        if found.data is not None:
            assert found.size == len(found.data) <= max_each
            assert found.sha256 == hashlib.sha256(found.data).hexdigest()
    assert len(parsed.recipients) <= 3 * 50 and all("@" in r for r in parsed.recipients)
    # What the child sends the parent comes back as it was.
    assert mail_from_wire(json.loads(json.dumps(mail_to_wire(parsed)))) == parsed


def parse_bounded(raw: bytes, max_each: int = 150, max_total: int = 4000) -> None:
    try:
        parsed = parse_email(raw, max_bytes=max(len(raw), max_total), attachment_max_bytes=max_each)
    except Exception as exc:
        from voicebot.errors import InvalidInput

        assert isinstance(exc, InvalidInput), repr(exc)
        assert exc.code in ("invalid_input", "email_too_large", "email_unparseable"), exc.code
        return
    assert_bounded_attachments(parsed, max_each, max(len(raw), max_total))


@FUZZ
@given(mails())
def test_fuzzed_attachment_structures_are_bounded(raw: bytes) -> None:
    parse_bounded(raw)


@FUZZ
@given(st.lists(attachment_parts(), max_size=8), st.integers(min_value=0, max_value=600))
def test_fuzzed_limits_hold(parts: list[bytes], max_each: int) -> None:
    body = b"".join(b"--z\r\n" + part + b"\r\n" for part in parts) + b"--z--\r\n"
    raw = b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n" + body
    parse_bounded(raw, max_each=max_each, max_total=max_each * 3)


@FUZZ
@given(st.binary(max_size=1500))
def test_arbitrary_bytes_in_an_attachment(tail: bytes) -> None:
    parse_bounded(b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n"
                  b"Content-Disposition: attachment; filename=x.bin\r\n" + tail)


def test_hostile_sizes_never_reach_the_answer() -> None:
    # Sent by the parent to the child and back: attachments beyond the listed cap are not re-created by the parent.
    fields = mail_to_wire(parse_email(inbound("hi", message_id="<w@x>").as_bytes()))
    fields["attachments"] = [{"name": "a", "content_type": "a/b", "size": 1, "sha256": "", "data": "aGk=",
                              "note": ""}] * (MAX_LISTED_ATTACHMENTS + 10)
    assert len(mail_from_wire(fields).attachments) == MAX_LISTED_ATTACHMENTS
    with pytest.raises(ValueError):
        mail_from_wire({**fields, "attachments": [{**fields["attachments"][0], "data": "not base64!"}]})


def test_the_default_agent_answers_when_no_address_matches(sqlite_db: Engine) -> None:
    add_agent(sqlite_db, name="sales", email_address="sales@shop.example")
    from channels.email.service import addressed_agent, agent_addresses

    with session_scope(sqlite_db) as session:
        assert addressed_agent(session, ["eva@shop.example"]) is None
        found = addressed_agent(session, ["x@y.z", "sales@shop.example"])
        assert found is not None and found.name == "sales"
        assert agent_addresses(session) == ["sales@shop.example"]
