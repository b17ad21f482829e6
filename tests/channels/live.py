"""Both text channels wired to local stand-ins (the Graph API server, an aiosmtpd SMTP server) for tests that
run the whole admin API (the OpenAPI/schemathesis test): every channel endpoint then does its real work instead
of answering 503."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from sqlalchemy.engine import Engine

from channels.email.service import EmailService
from channels.whatsapp.service import WhatsAppService
from tests.channels.conftest import KeepMessages, SmtpSink, free_port
from tests.fakes.graph_server import FakeGraph
from voicebot.agent.core import AgentCore
from voicebot.config import Settings


@dataclass
class LiveChannels:
    settings: Settings
    """The given settings with the channels pointed at the stand-ins."""
    whatsapp: WhatsAppService
    email: EmailService
    graph: FakeGraph
    sink: SmtpSink
    smtp: Controller

    async def close(self) -> None:
        await self.whatsapp.close()
        await self.email.close()
        await self.graph.close()
        await asyncio.to_thread(self.smtp.stop)


async def start_live_channels(settings: Settings, engine: Engine, core: AgentCore | None) -> LiveChannels:
    graph = FakeGraph()
    await graph.start()
    sink = SmtpSink("127.0.0.1", free_port())
    smtp = Controller(KeepMessages(sink), hostname=sink.host, port=sink.port)
    await asyncio.to_thread(smtp.start)
    settings = settings.with_(
        whatsapp_app_secret="live-app-secret", whatsapp_verify_token="live-verify-token",
        whatsapp_token=graph.token, whatsapp_phone_number_id=graph.phone_number_id, whatsapp_api_url=graph.api_url,
        smtp_host=sink.host, smtp_port=sink.port, smtp_starttls=False, smtp_from="eva@shop.example")
    return LiveChannels(settings, WhatsAppService(settings, engine, core), EmailService(settings, engine, core),
                        graph, sink, smtp)
