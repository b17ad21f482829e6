"""Attacks on the e-mail channel (security review F1, F4, F13, L1), each against the real mail servers: dovecot
(IMAP, mail delivered by APPEND) and aiosmtpd (SMTP).  A scripted model answers."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from channels.email.parse_worker import ParseWorker
from channels.email.service import EmailService
from channels.email.transport import ImapMailbox
from models import EmailReceipt
from models.db import session_scope
from tests.api.conftest import closed_port
from tests.channels.conftest import Dovecot, ScriptedLLM, SmtpSink, all_text_of
from tests.channels.test_email_service import EVA, mail, make_mail
from tests.loop_probe import LoopProbe, stall_bound
from voicebot.agent.core import AgentCore
from voicebot.errors import InvalidInput, Unavailable
from voicebot.llm.base import ChatMessage

T = TypeVar("T")


async def max_tick_gap(work: Awaitable[T]) -> tuple[T, float]:
    """Run ``work`` while a 20 ms ticker runs on the same loop; the longest time between two ticks."""
    async with LoopProbe(0.02) as probe:
        result = await work
    return result, probe.longest_interval


def redos_mail() -> bytes:
    """One 1 MB line of "On Monday wrote : wrote : ..." (quadratic for the old ``^On.*wrote.*:$`` patterns)."""
    message = EmailMessage()
    message["From"] = "attacker@example.net"
    message["To"] = EVA
    message["Subject"] = "q"
    message["Message-ID"] = "<redos@example.net>"
    message.set_content("On Monday " + "wrote : " * 130_000 + "x")
    return message.as_bytes()


def nested_mail(depth: int = 20_000) -> bytes:
    """Multiparts nested ``depth`` deep (about 1 MB): the stdlib walks them recursively."""
    head = ("From: nester@example.net\r\nTo: eva@shop.example\r\nSubject: nested\r\n"
            "Message-ID: <nested@example.net>\r\nMIME-Version: 1.0\r\n")
    opening = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(depth))
    closing = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(depth)))
    return (head + opening + "Content-Type: text/plain\r\n\r\nhello\r\n" + closing).encode()


def html_mail() -> bytes:
    """A 1.2 MB HTML body built from what makes ``html.parser`` quadratic (unclosed tags, nesting, comments)."""
    message = EmailMessage()
    message["From"] = "html@example.net"
    message["To"] = EVA
    message["Subject"] = "brakes"
    message["Message-ID"] = "<html@example.net>"
    markup = ("<p>Do you fix brakes?</p>" + "<div>" * 50_000 + "</span>" * 50_000 + "<!--x" * 20_000
              + "<a " * 100_000)
    message.set_content(markup, subtype="html")
    return message.as_bytes()


def oversize_mail(size: int) -> bytes:
    message = EmailMessage()
    message["From"] = "big@example.net"
    message["To"] = EVA
    message["Subject"] = "big"
    message["Message-ID"] = "<big@example.net>"
    message.set_content("Please see the attachment.")
    message.add_attachment(b"\0" * size, maintype="application", subtype="octet-stream", filename="big.bin")
    return message.as_bytes()


async def test_hostile_mail_never_stalls_the_event_loop(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """F1: a 1 MB quote-marker line, 20,000 nested multiparts, 1.2 MB of hostile HTML and a mail over the size
    limit are answered or refused with a reason while the loop keeps ticking every 20 ms."""
    # The parser child is niced (calls first): on a loaded test machine its wall time says little, so the budget
    # is generous; the point here is the event loop's ticks and the outcome.
    box = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path, email_max_bytes=2_000_000, email_parse_timeout=30)
    for raw in (redos_mail(), nested_mail(), html_mail(), oversize_mail(2_500_000)):
        box.deliver(raw)
    caplog.set_level(logging.WARNING, logger="channels.email.service")
    # A full garbage collection of the heap a long test session has built (hundreds of ms here) would show up as a
    # gap whatever the mail; frozen, the collector only walks what is allocated from now on.
    gc.collect()
    gc.freeze()
    started = time.monotonic()
    try:
        result, gap = await max_tick_gap(box.service.poll_once())
    finally:
        gc.unfreeze()
        await box.service.close()
    elapsed = time.monotonic() - started
    print(f"max loop gap {gap * 1000:.1f} ms, poll {elapsed:.1f} s")
    assert gap < stall_bound(), f"the event loop stalled for {gap * 1000:.0f} ms"
    assert (result.unseen, result.answered, result.refused, result.failed) == (4, 2, 2, 0)
    assert all(seen for _id, seen in box.seen())  # nothing is left to be fetched again for ever
    assert sorted(rcpts[0] for _from, rcpts in smtp_sink.envelopes) == ["attacker@example.net", "html@example.net"]
    brakes = next(m for m in smtp_sink.messages if m["To"] == "html@example.net")
    assert "Do you fix brakes?" in all_text_of(brakes)
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("email_too_large" in line and "2000000" in line for line in refused), refused
    assert any("email_unparseable" in line and "multipart sections" in line for line in refused), refused


async def test_a_parse_over_its_cpu_budget_or_the_wall_clock_is_refused() -> None:
    """F1: over its CPU budget a message is refused by the child, which parses on; a child that does not answer
    in wall-clock time is killed and a fresh one parses the next message."""
    raw = mail("Hello?", message_id="<slow@example.org>")
    async with ParseWorker(timeout=0.05) as worker:  # the hostile HTML takes a second or more of CPU
        with pytest.raises(InvalidInput) as caught:
            await worker.parse(html_mail())
        assert caught.value.code == "email_parse_timeout" and "CPU time" in caught.value.message
        assert (await worker.parse(raw)).text == "Hello?" and worker.started == 1  # the child parses on
    async with ParseWorker(wall_timeout=1e-6) as worker:
        with pytest.raises(InvalidInput) as caught:
            await worker.parse(raw)
        assert caught.value.code == "email_parse_timeout" and worker.started == 1
        worker.wall_timeout = 60
        parsed = await worker.parse(raw)
        assert (parsed.sender, parsed.text, worker.started) == ("ada@example.org", "Hello?", 2)
        with pytest.raises(InvalidInput) as caught:
            await worker.parse(b"Subject: no sender\r\n\r\nhi\r\n")
        assert worker.started == 2  # a refused message does not cost the child


def everything_it_knows(messages: Sequence[ChatMessage]) -> str:
    """A model that repeats all the history it was given (the worst case for a leak)."""
    return " / ".join(m.content for m in messages if m.role in ("user", "assistant"))


async def test_reply_goes_to_from_never_to_a_different_reply_to(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    """F4: From victim + Reply-To attacker: the answer (written with the victim's memory) goes to the victim."""
    box = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path)
    box.llm.reply = everything_it_knows
    box.deliver(mail("My address is 12 Elm Street.", message_id="<v1@example.org>",
                     sender="Victim <victim@example.org>"))
    assert (await box.service.poll_once()).answered == 1
    box.deliver(mail("Please repeat my address.", message_id="<spoof@evil.example>",
                     sender="Victim <victim@example.org>", Reply_To="attacker@evil.example"))
    result = await box.service.poll_once()
    await box.service.close()
    assert result.answered == 1
    assert smtp_sink.by_recipient("attacker@evil.example") == []
    assert [rcpts for _from, rcpts in smtp_sink.envelopes] == [["victim@example.org"], ["victim@example.org"]]
    assert "12 Elm Street" in all_text_of(smtp_sink.messages[1])  # it went to its owner only
    assert smtp_sink.messages[1]["To"] == "Victim <victim@example.org>"


@pytest.mark.parametrize("mails", [1, 10])
async def test_two_workers_on_one_inbox_answer_each_mail_once(
        any_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path, mails: int) -> None:
    """F13: two Eva workers (two services, one database, one inbox) polling at the same time: one reply each."""
    first = make_mail(any_db, dovecot, smtp_sink, tmp_path)
    first.llm.delay = 0.05  # replies take a while, so the two rounds overlap
    second_settings = first.service.settings
    llm = ScriptedLLM(delay=0.05)
    second = EmailService(second_settings, any_db, AgentCore(second_settings, any_db, llm))
    for n in range(mails):
        first.deliver(mail(f"Question {n}?", message_id=f"<race{n}@example.org>", sender=f"c{n}@example.org"))
    try:
        results = await asyncio.gather(first.service.poll_once(), second.poll_once())
        assert sum(r.answered for r in results) == mails
        assert sorted(rcpts[0] for _from, rcpts in smtp_sink.envelopes) == [
            f"c{n}@example.org" for n in range(mails)]
        assert len(first.llm.calls) + len(llm.calls) == mails  # and each reply was generated once
        # Whatever the busy worker left unseen, the next round settles without a second reply.
        for service in (first.service, second):
            await service.poll_once()
        assert len(smtp_sink.messages) == mails and all(seen for _id, seen in first.seen())
    finally:
        await first.service.close()
        await second.close()


async def test_a_message_id_reused_by_another_sender_is_that_senders_own_mail(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    """F13: the same Message-ID from a second sender is neither a duplicate of the first mail nor a way to its
    reply; the same Message-ID from the same sender is a duplicate."""
    box = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path)
    box.llm.reply = everything_it_knows
    box.deliver(mail("My PIN is 4711.", message_id="<shared@example.org>", sender="victim@example.org"))
    box.deliver(mail("What is my PIN?", message_id="<shared@example.org>", sender="attacker@evil.example"))
    box.deliver(mail("My PIN is 4711.", message_id="<shared@example.org>", sender="victim@example.org"))
    result = await box.service.poll_once()
    await box.service.close()
    assert (result.answered, result.duplicates) == (2, 1)
    to_attacker = smtp_sink.by_recipient("attacker@evil.example")
    assert len(to_attacker) == 1 and "4711" not in all_text_of(to_attacker[0])
    assert len(smtp_sink.by_recipient("victim@example.org")) == 1


async def test_rate_limits_store_the_excess_unanswered(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """L1: per sender 2 an hour, 3 in all: the rest waits with its reason, unseen, unanswered this hour."""
    box = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path, email_replies_per_sender_hour=2,
                    email_replies_per_hour=3)
    for n in range(3):
        box.deliver(mail(f"Flood {n}", message_id=f"<a{n}@example.org>", sender="flood@example.org"))
    for n in range(2):
        box.deliver(mail(f"Other {n}", message_id=f"<b{n}@example.org>", sender="other@example.org"))
    caplog.set_level(logging.WARNING, logger="channels.email.service")
    result = await box.service.poll_once()
    await box.service.close()
    assert (result.answered, result.limited) == (3, 2)
    assert [rcpts[0] for _from, rcpts in smtp_sink.envelopes] == [
        "flood@example.org", "flood@example.org", "other@example.org"]
    assert len(box.llm.calls) == 3
    assert sorted(seen for _id, seen in box.seen()) == [False, False, True, True, True]
    limited = {(r.sender, r.message_id): (r.reason, r.text) for r in box.rows(EmailReceipt) if r.status == "waiting"}
    assert limited == {("flood@example.org", "<a2@example.org>"): ("email_rate_limited_sender", "Flood 2"),
                       ("other@example.org", "<b1@example.org>"): ("email_rate_limited", "Other 1")}
    assert sum("over the rate limit" in r.getMessage() for r in caplog.records) == 2


async def test_a_parser_that_cannot_start_leaves_the_mail_unseen() -> None:
    """A broken installation is not the message's fault: Unavailable (the poller stops the round), not a refusal."""
    worker = ParseWorker()
    worker.module = "channels.email.no_such_module"
    async with worker:
        with pytest.raises(Unavailable) as caught:
            await worker.parse(mail("Hello?", message_id="<nostart@example.org>"))
    assert caught.value.code == "email_parser_unavailable"


async def test_a_reused_message_id_never_gets_another_senders_unsent_reply(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    """F13: the victim's reply is generated but not sent (SMTP down); an attacker reusing the victim's Message-ID
    with a Reply-To of their own gets a reply of their own, and the victim's stored reply still goes to the
    victim."""
    down = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path, smtp_port=closed_port())
    down.llm.reply = everything_it_knows
    down.deliver(mail("My PIN is 4711.", message_id="<pin@example.org>", sender="victim@example.org"))
    assert (await down.service.poll_once()).failed == 1
    await down.service.close()
    down.deliver(mail("What is my PIN?", message_id="<pin@example.org>", sender="attacker@evil.example",
                      Reply_To="attacker@evil.example"))
    up_settings = down.service.settings.with_(smtp_port=smtp_sink.port)
    up = EmailService(up_settings, sqlite_db, AgentCore(up_settings, sqlite_db, down.llm))
    try:
        result = await up.poll_once()
    finally:
        await up.close()
    assert result.answered == 2
    (to_victim,) = smtp_sink.by_recipient("victim@example.org")
    (to_attacker,) = smtp_sink.by_recipient("attacker@evil.example")
    assert "4711" in all_text_of(to_victim) and "4711" not in all_text_of(to_attacker)


def _an_hour_passes(engine: Engine) -> None:
    """Move every receipt two hours into the past: the hourly windows the limits count in are then empty."""
    with session_scope(engine) as session:
        for row in session.exec(select(EmailReceipt)).all():
            row.received_at -= timedelta(hours=2)
            row.updated_at -= timedelta(hours=2)
            session.add(row)


async def test_forged_senders_cannot_silence_known_customers_and_no_mail_is_lost(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    """From is anyone's to write: 8 forged senders spend the hourly budget for new senders.  A customer answered
    before still gets an answer at once (a budget of its own), and the excess stays unseen and is answered, once
    each, as later hours free the budget."""
    box = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path, email_replies_per_sender_hour=5,
                    email_replies_per_hour=3)
    box.deliver(mail("Do you fix brakes?", message_id="<c0@example.org>", sender="customer@example.org"))
    assert (await box.service.poll_once()).answered == 1
    _an_hour_passes(sqlite_db)  # the customer was answered before this hour: a known contact
    for n in range(8):
        box.deliver(mail(f"Spam {n}", message_id=f"<s{n}@evil.example>", sender=f"bot{n}@evil.example"))
    box.deliver(mail("When can I come?", message_id="<c1@example.org>", sender="customer@example.org"))
    try:
        result = await box.service.poll_once()
        assert (result.answered, result.limited) == (4, 5), result  # 3 bots and the customer
        assert len(smtp_sink.by_recipient("customer@example.org")) == 2
        assert sum(not seen for _id, seen in box.seen()) == 5  # waiting, not dropped
        waiting = [r for r in box.rows(EmailReceipt) if r.status == "waiting"]
        assert len(waiting) == 5 and all(r.reason == "email_rate_limited" for r in waiting)
        fetched: list[int] = []

        class CountingMailbox(ImapMailbox):  # the real dovecot mailbox, counting what is downloaded
            def fetch(self, uid: int, max_bytes: int | None = None) -> bytes | None:
                fetched.append(uid)
                return super().fetch(uid, max_bytes)

        box.service._mailbox = lambda: CountingMailbox.from_settings(box.service.settings)
        again = await box.service.poll_once()  # the same hour: nothing more is answered, nothing is lost
        assert (again.answered, again.limited) == (0, 5), again
        assert len(fetched) == 1, fetched  # one waiting mail shows the budget still spent; the rest are not fetched
        for expected in (3, 2):  # each later hour answers as many as the budget allows
            _an_hour_passes(sqlite_db)
            result = await box.service.poll_once()
            assert result.answered == expected, result
    finally:
        await box.service.close()
    assert all(len(smtp_sink.by_recipient(f"bot{n}@evil.example")) == 1 for n in range(8))
    assert all(seen for _id, seen in box.seen())
    assert len(box.llm.calls) == 10
    assert {r.status for r in box.rows(EmailReceipt)} == {"answered"}
