"""The text channels of one Eva process, started by ``eva run`` (``voicebot.server.EvaRuntime``).

The chat channel needs no background work (the admin API serves it).  WhatsApp and e-mail always exist (so
the admin API can say exactly which setting is missing); the background work starts only where it is
configured: the WhatsApp retry sweeper when a WhatsApp token or app secret is set, the IMAP poller when
``EVA_IMAP_HOST`` is set.  The campaign sender (running WhatsApp and e-mail campaigns) always runs, sending
on whichever of the two is configured.  All three channels share one :class:`ConversationFlows`, so a flow
running on any of them can send a message on WhatsApp or e-mail (``send_message`` actions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from channels.chat.service import ChatService
from channels.email.service import FLOW_MESSAGE_SUBJECT, EmailService
from channels.whatsapp.service import WhatsAppService
from voicebot.agent.core import AgentCore
from voicebot.campaigns.senders import CampaignSender
from voicebot.config import Settings
from voicebot.flows.conversation import ConversationFlows
from voicebot.stt.whisper import SpeechRouter

log = logging.getLogger(__name__)


@dataclass
class Channels:
    whatsapp: WhatsAppService
    email: EmailService
    chat: ChatService
    campaigns: CampaignSender | None = None
    """Sends running WhatsApp and e-mail campaigns (``voicebot.campaigns.senders``) through the two services."""

    async def close(self) -> None:
        """Stop taking messages; finish (or leave pending/unseen) what is in hand."""
        if self.campaigns is not None:
            await self.campaigns.close()  # first: it sends through the services below
        await self.whatsapp.close()
        await self.email.close()


async def start_channels(settings: Settings, engine: Engine, core: AgentCore | None, *,
                         stt: SpeechRouter | None = None) -> Channels:
    """``stt``: the calls' speech recognisers, which WhatsApp voice notes are transcribed with."""
    async def send_message(channel: str, to: str, text: str) -> bool:
        # A flow's send_message action, on either channel whichever one the flow runs on (the services are
        # bound below, before any message can arrive).
        if channel == "whatsapp":
            await whatsapp.send_message(to, text)
        elif channel == "email":
            await email.send(to, FLOW_MESSAGE_SUBJECT, text)
        else:
            return False
        return True

    flows = ConversationFlows(engine, core, send_message=send_message) if core is not None else None
    whatsapp = WhatsAppService(settings, engine, core, flows=flows, stt=stt)
    email = EmailService(settings, engine, core, flows=flows)
    if settings.whatsapp_token or settings.whatsapp_app_secret:
        await whatsapp.start()
        log.info("WhatsApp channel on (agent %r); webhook: /api/v1/whatsapp/webhook", settings.whatsapp_agent)
    if email.receiving:
        await email.start()
        log.info("e-mail channel polling %s every %gs (agent %r)", settings.imap_host, email.poll_interval,
                 settings.email_agent)
    # Always running: a campaign on a channel that is not configured waits (its attempts untouched) until it is.
    campaigns = CampaignSender(engine, whatsapp=whatsapp, email=email)
    await campaigns.start()
    return Channels(whatsapp, email, ChatService(engine, core, flows), campaigns)
