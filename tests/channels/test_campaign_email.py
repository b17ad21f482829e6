"""E-mail campaigns through real mail servers: the sender renders the campaign's e-mail template with each
contact's variables (plain text and HTML, HTML escaped) and sends it From the campaign agent's address over SMTP
(aiosmtpd relaying into dovecot, so the message is fetched back from the recipient's real IMAP mailbox); the
contact's reply "unsubscribe", threaded to it, is read by the e-mail channel from its IMAP inbox, puts the address
on the do-not-call list and is answered with a confirmation (no model time), and that contact's next attempt is
skipped."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from channels.email.service import own_display
from models import Agent, Conversation, Message
from models.campaigns import CampaignAttempt, DncEntry
from models.db import session_scope
from models.email import EmailTemplate
from tests.api.conftest import Api, start_api
from tests.api.test_campaigns import upload
from tests.channels.conftest import Dovecot, SmtpSink, plain_of
from tests.channels.test_email_attachments import relay  # noqa: F401 - the SMTP → dovecot fixture
from tests.channels.test_email_service import Mail, make_mail
from voicebot.campaigns.senders import CampaignSender
from voicebot.i18n import phrase

ALWAYS = {day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


@dataclass
class World:
    box: Mail
    api: Api
    dovecot: Dovecot
    relay: SmtpSink
    agent_id: int
    agent_address: str


@pytest.fixture
async def world(sqlite_db: Engine, dovecot: Dovecot, relay: SmtpSink,  # noqa: F811 - the fixture above
                tmp_path: Path) -> AsyncIterator[World]:
    box = make_mail(sqlite_db, dovecot, relay, tmp_path)
    api = await start_api(box.service.settings, sqlite_db, offline_asterisk=True, email=box.service)
    address = f"{box.user}@shop.example"  # the relay delivers mail for it into the channel's inbox
    with session_scope(sqlite_db) as session:
        agent = Agent(name="seller", email_address=address, email_signature="The Bike Shop")
        session.add(agent)
        session.add(EmailTemplate(name="spring-mail", subject="Spring offer for {{ name }}",
                                  text="Hello {{ name }},\nyour {{ plan }} plan is 20% off.\n",
                                  html="<p>Hello {{ name }}, your <b>{{ plan }}</b> plan is 20% off.</p>"))
        session.flush()
        assert agent.id is not None
        agent_id = agent.id
    yield World(box, api, dovecot, relay, agent_id, address)
    await api.client.close()
    await box.service.close()


async def campaign(world: World, name: str, csv: str, *, start: bool = True) -> int:
    body = {"name": name, "channel": "email", "agent_id": world.agent_id,
            "rules": {"windows": ALWAYS, "pacing": {"max_per_minute": 50}, "email_template": "spring-mail"}}
    status, made = await world.api.call("POST", "/api/v1/campaigns", role="designer", json=body)
    assert status == 201, made
    status, report = await upload(world.api, made["id"], csv)
    assert status == 200, report
    if start:
        status, started = await world.api.call("POST", f"/api/v1/campaigns/{made['id']}/start", role="admin")
        assert (status, started["status"]) == (200, "running"), started
    return int(made["id"])


def mailbox(dovecot: Dovecot, user: str) -> list[EmailMessage]:
    """Every message in ``user``'s INBOX, fetched over IMAP."""
    connection = dovecot.imap(user)
    try:
        connection.select("INBOX")
        status, data = connection.uid("SEARCH", "ALL")
        assert status == "OK"
        found = []
        for uid in (data[0] or b"").split():
            status, fetched = connection.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
            assert status == "OK"
            raw = next(item for item in fetched if isinstance(item, tuple))[1]
            message = message_from_bytes(raw, policy=policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
        return found
    finally:
        connection.logout()


def attempts(engine: Engine, campaign_id: int) -> list[CampaignAttempt]:
    with session_scope(engine) as session:
        return list(session.exec(select(CampaignAttempt).where(CampaignAttempt.campaign_id == campaign_id)
                                 .order_by(col(CampaignAttempt.id))).all())


async def test_the_rendered_template_arrives_and_an_unsubscribe_reply_blocks_the_address(world: World) -> None:
    ana = f"ana-{uuid.uuid4().hex[:8]}"
    csv = f"phone,name,plan,email\n+34600000001,Ana,gold & more,{ana}@example.org\n+34600000002,Bea,silver,\n"
    spring = await campaign(world, "spring", csv)
    autumn = await campaign(world, "autumn", csv, start=False)  # imported before the opt-out
    sender = CampaignSender(world.box.engine, email=world.box.service)
    done = await sender.run_once()
    assert (done.sent, done.failed) == (1, 1)
    first, bea = attempts(world.box.engine, spring)
    assert (first.outcome, bea.outcome, bea.sip_cause) == ("sent", "failed", "no_email_address")

    (received,) = mailbox(world.dovecot, ana)
    assert received["From"] == own_display(world.box.service.settings, world.agent_address)
    assert (received["To"], received["Subject"]) == (f"{ana}@example.org", "Spring offer for Ana")
    assert received["List-Unsubscribe"] == f"<mailto:{world.agent_address}?subject=unsubscribe>"
    assert plain_of(received) == "Hello Ana,\nyour gold & more plan is 20% off.\n\n-- \nThe Bike Shop\n"
    html = received.get_body(("html",))
    assert html is not None
    assert "<p>Hello Ana, your <b>gold &amp; more</b> plan is 20% off.</p>" in str(html.get_content())
    with session_scope(world.box.engine) as session:
        conversation = session.get(Conversation, first.conversation_id)
        assert conversation is not None and (conversation.channel, conversation.agent_id) == ("email",
                                                                                            world.agent_id)
        (stored,) = session.exec(select(Message).where(Message.conversation_id == conversation.id)).all()
        assert stored.external_id == received["Message-ID"]
    assert (await sender.run_once()).sent == 0 and len(mailbox(world.dovecot, ana)) == 1  # sent once

    # Ana answers "unsubscribe" in the thread: the channel polls it from IMAP and confirms; no model time.
    reply = EmailMessage()
    reply["From"] = f"Ana <{ana}@example.org>"
    reply["To"] = world.agent_address
    reply["Subject"] = "Re: Spring offer for Ana"
    reply["Message-ID"] = f"<stop-{ana}@example.org>"
    reply["In-Reply-To"] = received["Message-ID"]
    reply.set_content("unsubscribe\n\n> Hello Ana,\n> your gold & more plan is 20% off.\n")
    world.box.deliver(reply.as_bytes())
    result = await world.box.service.poll_once()
    assert (result.unseen, result.answered) == (1, 1)
    assert world.box.llm.calls == []
    confirmation = mailbox(world.dovecot, ana)[-1]
    assert confirmation["In-Reply-To"] == reply["Message-ID"]
    assert plain_of(confirmation).startswith(phrase("campaign_opted_out", "en"))
    with session_scope(world.box.engine) as session:
        (entry,) = session.exec(select(DncEntry)).all()
        assert (entry.phone, entry.email, entry.campaign_id, entry.source) == ("", f"{ana}@example.org", None,
                                                                               "reply")
        user = session.exec(select(Message).where(Message.external_id == reply["Message-ID"])).one()
        assert user.conversation_id == first.conversation_id
    assert (await world.box.service.poll_once()).answered == 0  # seen: never confirmed twice

    # The next campaign skips her address.
    assert (await world.api.call("POST", f"/api/v1/campaigns/{autumn}/start", role="admin"))[0] == 200
    done = await sender.run_once()
    assert (done.sent, done.dnc_skipped, done.failed) == (0, 1, 1)
    assert [a.outcome for a in attempts(world.box.engine, autumn)] == ["dnc_skipped", "failed"]
    assert len(mailbox(world.dovecot, ana)) == 2
