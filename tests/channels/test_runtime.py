"""``start_channels`` (what ``eva run`` calls): configured channels start their background work, unconfigured
ones stay idle, and ``close`` stops them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.engine import Engine

from channels.runtime import start_channels
from models import InboundMessage
from models.db import session_scope
from tests.api.conftest import offline_settings
from tests.channels.conftest import Dovecot, ScriptedLLM, SmtpSink, plain_of
from tests.fakes.graph_server import FakeGraph
from voicebot.agent.core import AgentCore


async def test_configured_channels_run_and_stop(sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink,
                                                graph: FakeGraph, tmp_path: Path) -> None:
    settings = offline_settings(
        tmp_path / "data", imap_host=dovecot.host, imap_port=dovecot.port, imap_user="runtime-inbox",
        imap_password=dovecot.password, imap_ssl=False, imap_poll_interval=0.1, smtp_host=smtp_sink.host,
        smtp_port=smtp_sink.port, smtp_starttls=False, smtp_from="eva@shop.example",
        whatsapp_token=graph.token, whatsapp_phone_number_id=graph.phone_number_id, whatsapp_api_url=graph.api_url,
        whatsapp_app_secret="s")
    # A WhatsApp message a previous run accepted but never answered.
    with session_scope(sqlite_db) as session:
        session.add(InboundMessage(channel="whatsapp", external_id="wamid.left-over", sender="16505551234",
                                   text="Hello again"))
    dovecot.deliver("runtime-inbox", b"From: ada@example.org\r\nTo: eva@shop.example\r\nSubject: Hours\r\n"
                                     b"Message-ID: <rt@example.org>\r\n\r\nWhen are you open?\r\n")
    channels = await start_channels(settings, sqlite_db, AgentCore(settings, sqlite_db, ScriptedLLM()))
    try:
        await graph.wait_for_messages(1)
        assert await asyncio.to_thread(smtp_sink.received.wait, 15)
    finally:
        await channels.close()
    assert graph.sent[0]["text"]["body"] == "You said: Hello again"
    assert plain_of(smtp_sink.messages[0]).strip() == "You said: When are you open?"
    assert dovecot.flags("runtime-inbox") == [("<rt@example.org>", True)]


async def test_unconfigured_channels_stay_idle(sqlite_db: Engine, tmp_path: Path) -> None:
    settings = offline_settings(tmp_path / "data")
    channels = await start_channels(settings, sqlite_db, None)
    try:
        assert not channels.email.receiving
        assert channels.whatsapp._sweeper is None and channels.email._task is None
    finally:
        await channels.close()
