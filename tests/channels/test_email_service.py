"""The e-mail channel against real mail servers: dovecot (IMAP, mail delivered by APPEND) and aiosmtpd (SMTP).
A scripted model answers (the mechanics are the point); the real embedded model answers in
test_channels_real_model.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from channels.email.service import EmailService
from channels.email.transport import ImapMailbox
from models import Contact, Conversation, Message
from models.db import session_scope
from tests.api.conftest import Api, closed_port, offline_settings, start_api
from tests.channels.conftest import Dovecot, ScriptedLLM, SmtpSink, plain_of
from voicebot.agent.core import AgentCore
from voicebot.config import Settings
from voicebot.errors import EmailError

EVA = "eva@shop.example"


def mail(body: str, *, message_id: str, subject: str = "Repairs", sender: str = "Ada <ada@example.org>",
         **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = f"Eva <{EVA}>"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


def mail_settings(tmp_path: Path, dovecot: Dovecot, sink: SmtpSink, user: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "imap_host": dovecot.host, "imap_port": dovecot.port, "imap_user": user, "imap_password": dovecot.password,
        "imap_ssl": False, "smtp_host": sink.host, "smtp_port": sink.port, "smtp_starttls": False,
        "smtp_from": f"Eva <{EVA}>", "imap_poll_interval": 0.1,
    }
    values.update(changes)
    return offline_settings(tmp_path / "data", **values)


@dataclass
class Mail:
    service: EmailService
    llm: ScriptedLLM
    engine: Engine
    dovecot: Dovecot
    sink: SmtpSink
    user: str

    def deliver(self, raw: bytes) -> None:
        self.dovecot.deliver(self.user, raw)

    def seen(self) -> list[tuple[str, bool]]:
        return self.dovecot.flags(self.user)

    def rows(self, model: Any) -> list[Any]:
        with session_scope(self.engine) as session:
            return list(session.exec(select(model).order_by(col(model.id))).all())


def make_mail(engine: Engine, dovecot: Dovecot, sink: SmtpSink, tmp_path: Path, **changes: Any) -> Mail:
    user = f"eva-{uuid.uuid4().hex[:8]}"  # a fresh mailbox per test
    settings = mail_settings(tmp_path, dovecot, sink, user, **changes)
    llm = ScriptedLLM()
    return Mail(EmailService(settings, engine, AgentCore(settings, engine, llm)), llm, engine, dovecot, sink, user)


@pytest.fixture
async def box(sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> AsyncIterator[Mail]:
    world = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path)
    yield world
    await world.service.close()


async def test_mail_is_answered_in_its_thread_and_marked_seen_after_the_reply(
        any_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    box = make_mail(any_db, dovecot, smtp_sink, tmp_path)
    box.deliver(mail("Do you repair e-bikes?", message_id="<q1@example.org>"))
    result = await box.service.poll_once()
    assert (result.unseen, result.answered) == (1, 1)
    (reply,) = smtp_sink.messages
    assert smtp_sink.envelopes[0] == (EVA, ["ada@example.org"])
    assert (reply["To"], reply["From"], reply["Subject"], reply["In-Reply-To"]) == (
        "Ada <ada@example.org>", f"Eva <{EVA}>", "Re: Repairs", "<q1@example.org>")
    assert plain_of(reply).strip() == "You said: Do you repair e-bikes?"
    assert box.seen() == [("<q1@example.org>", True)]
    (contact,) = box.rows(Contact)
    assert (contact.email, contact.name) == ("ada@example.org", "Ada")
    (conversation,) = box.rows(Conversation)
    assert (conversation.channel, conversation.external_id) == ("email", "<q1@example.org>")
    user, assistant = box.rows(Message)
    assert (user.external_id, assistant.external_id) == ("<q1@example.org>", reply["Message-ID"])

    # Ada answers our reply, quoting it: same conversation, only her new text reaches the model.
    box.deliver(mail(f"And how long does it take?\n\nOn Mon, Eva <{EVA}> wrote:\n> You said: Do you repair e-bikes?",
                     message_id="<q2@example.org>", subject="Re: Repairs", In_Reply_To=reply["Message-ID"],
                     References=f"<q1@example.org> {reply['Message-ID']}"))
    result = await box.service.poll_once()
    assert result.answered == 1
    second = smtp_sink.messages[1]
    assert second["Subject"] == "Re: Repairs"
    assert second["References"].split() == ["<q1@example.org>", reply["Message-ID"], "<q2@example.org>"]
    assert len(box.rows(Conversation)) == 1
    assert [m.content for m in box.llm.calls[1] if m.role in ("user", "assistant")] == [
        "Do you repair e-bikes?", "You said: Do you repair e-bikes?", "And how long does it take?"]
    assert box.seen() == [("<q1@example.org>", True), ("<q2@example.org>", True)]
    await box.service.close()


async def test_duplicates_automatic_and_own_mail_are_not_answered(box: Mail) -> None:
    box.deliver(mail("Hello?", message_id="<dup@example.org>"))
    box.deliver(mail("Hello?", message_id="<dup@example.org>"))  # the same message a second time
    box.deliver(mail("I am out of office.", message_id="<ooo@example.org>", Auto_Submitted="auto-replied"))
    box.deliver(mail("Delivery failed", message_id="<bounce@example.org>", sender="MAILER-DAEMON@example.org"))
    box.deliver(mail("loop?", message_id="<own@shop.example>", sender=f"Eva <{EVA}>"))
    result = await box.service.poll_once()
    assert (result.unseen, result.answered, result.duplicates, result.skipped, result.failed) == (5, 1, 1, 3, 0)
    assert len(box.sink.messages) == 1 and len(box.llm.calls) == 1
    assert all(seen for _id, seen in box.seen())
    assert (await box.service.poll_once()).unseen == 0


async def test_smtp_outage_leaves_mail_unseen_and_the_stored_reply_is_sent_later(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    down = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path, smtp_port=closed_port())
    down.deliver(mail("Are you open on Sunday?", message_id="<sun@example.org>"))
    down.deliver(mail("And on Monday?", message_id="<mon@example.org>"))
    result = await down.service.poll_once()
    assert (result.answered, result.failed) == (0, 1)  # the round stops at the first SMTP failure
    assert down.seen() == [("<sun@example.org>", False), ("<mon@example.org>", False)]
    user, assistant = down.rows(Message)  # the turn is kept, ready to be sent
    assert (user.external_id, assistant.text, assistant.external_id) == (
        "<sun@example.org>", "You said: Are you open on Sunday?", "")

    up_settings = down.service.settings.with_(smtp_port=smtp_sink.port)
    up = EmailService(up_settings, sqlite_db, AgentCore(up_settings, sqlite_db, down.llm))
    result = await up.poll_once()
    assert result.answered == 2
    assert [plain_of(m).strip() for m in smtp_sink.messages] == [
        "You said: Are you open on Sunday?", "You said: And on Monday?"]
    assert len(down.llm.calls) == 2  # Sunday's reply was generated once, sent when SMTP was back
    assert all(seen for _id, seen in down.seen())


async def test_mail_that_keeps_failing_is_given_up_after_max_failures(box: Mail) -> None:
    box.deliver(mail("Hello", message_id="<poison@example.org>", sender="nobody@example.org"))
    for _ in range(2):
        result = await box.service.poll_once()
        assert result.failed == 1 and box.seen() == [("<poison@example.org>", False)]
    result = await box.service.poll_once()
    assert result.failed == 1 and box.seen() == [("<poison@example.org>", True)]
    assert len(box.llm.calls) == 1 and box.sink.messages == []


async def test_poller_runs_in_the_background_and_stops(box: Mail) -> None:
    await box.service.start()
    box.deliver(mail("Background?", message_id="<bg@example.org>"))
    assert await asyncio.to_thread(box.sink.received.wait, 15)
    await box.service.close()
    assert plain_of(box.sink.messages[0]).strip() == "You said: Background?"
    assert box.seen() == [("<bg@example.org>", True)]


async def test_imap_errors(dovecot: Dovecot) -> None:
    wrong = ImapMailbox(dovecot.host, dovecot.port, "someone", "wrong password", use_ssl=False, timeout=5)
    with pytest.raises(EmailError) as caught:
        await asyncio.to_thread(wrong.open)
    assert (caught.value.code, caught.value.retryable) == ("imap_auth_failed", False)
    absent = ImapMailbox("127.0.0.1", closed_port(), "someone", "pw", use_ssl=False, timeout=5)
    with pytest.raises(EmailError) as caught:
        await asyncio.to_thread(absent.open)
    assert (caught.value.code, caught.value.retryable) == ("imap_unavailable", True)


# ---------------------------------------------------------------------------------------------- admin routes
@pytest.fixture
async def api(box: Mail) -> AsyncIterator[Api]:
    started = await start_api(box.service.settings, box.engine, offline_asterisk=True, email=box.service)
    yield started
    await started.client.close()


async def test_send_chat_and_conversations_routes(api: Api, box: Mail) -> None:
    status, sent = await api.call("POST", "/api/v1/email/send", role="designer",
                                  json={"to": "bob@example.org", "subject": "Your bike", "body": "It is ready."})
    assert status == 200, sent
    (first,) = box.sink.messages
    assert (first["To"], first["Subject"], first["Message-ID"]) == ("bob@example.org", "Your bike", sent["message_id"])
    assert plain_of(first).strip() == "It is ready."

    status, chat = await api.call("POST", "/api/v1/email/chat", role="designer",
                                  json={"email": "carol@example.org", "message": "Do you sell helmets?"})
    assert status == 200, chat
    assert chat["reply"] == "You said: Do you sell helmets?" and chat["sources"] == []
    second = box.sink.messages[1]
    assert (second["To"], second["Subject"], second["Message-ID"]) == (
        "carol@example.org", "Your question", chat["message_id"])
    assert plain_of(second).strip() == chat["reply"]

    status, page = await api.call("GET", "/api/v1/email/conversations", role="viewer")
    assert status == 200 and page["total"] == 2
    assert {(i["address"], i["messages"]) for i in page["items"]} == {("bob@example.org", 1),
                                                                       ("carol@example.org", 2)}
    status, refused = await api.call("POST", "/api/v1/email/send", role="designer",
                                     json={"to": "nobody@example.org", "subject": "x", "body": "y"})
    assert (status, refused["error"]["code"], refused["error"]["field"]) == (422, "smtp_recipient_refused", "to")
    status, refused = await api.call("POST", "/api/v1/email/send", role="designer",
                                     json={"to": "not an address", "subject": "x", "body": "y"})
    assert status == 422


async def test_routes_say_what_is_missing(sqlite_db: Engine, tmp_path: Path) -> None:
    settings = offline_settings(tmp_path / "data")
    service = EmailService(settings, sqlite_db, AgentCore(settings, sqlite_db, ScriptedLLM()))
    api = await start_api(settings, sqlite_db, offline_asterisk=True, email=service)
    try:
        status, body = await api.call("POST", "/api/v1/email/send", json={"to": "a@example.org", "subject": "s",
                                                                          "body": "b"})
        assert (status, body["error"]["code"]) == (503, "email_not_configured")
        assert "EVA_SMTP_HOST" in body["error"]["message"]
        status, body = await api.call("POST", "/api/v1/email/chat", json={"email": "a@example.org",
                                                                          "message": "hi"})
        assert (status, body["error"]["code"]) == (503, "email_not_configured")
    finally:
        await api.client.close()
