"""The text channels of one Eva process, started by ``eva run`` (``voicebot.server.EvaRuntime``).

Both services always exist (so the admin API can say exactly which setting is missing); the background work
starts only where it is configured: the WhatsApp retry sweeper when a WhatsApp token or app secret is set, the
IMAP poller when ``EVA_IMAP_HOST`` is set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from channels.email.service import EmailService
from channels.whatsapp.service import WhatsAppService
from voicebot.agent.core import AgentCore
from voicebot.config import Settings

log = logging.getLogger(__name__)


@dataclass
class Channels:
    whatsapp: WhatsAppService
    email: EmailService

    async def close(self) -> None:
        """Stop taking messages; finish (or leave pending/unseen) what is in hand."""
        await self.whatsapp.close()
        await self.email.close()


async def start_channels(settings: Settings, engine: Engine, core: AgentCore | None) -> Channels:
    whatsapp = WhatsAppService(settings, engine, core)
    email = EmailService(settings, engine, core)
    if settings.whatsapp_token or settings.whatsapp_app_secret:
        await whatsapp.start()
        log.info("WhatsApp channel on (agent %r); webhook: /api/v1/whatsapp/webhook", settings.whatsapp_agent)
    if email.receiving:
        await email.start()
        log.info("e-mail channel polling %s every %gs (agent %r)", settings.imap_host, email.poll_interval,
                 settings.email_agent)
    return Channels(whatsapp, email)
