"""The objects handlers work with, built once per application by ``create_app``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session

from admin_api.ami import AmiClient
from admin_api.asterisk_link import AsteriskLink
from admin_api.auth import AuthService
from admin_api.control import CallControl
from admin_api.dialplans import DialplanService
from admin_api.flows import FlowService
from admin_api.trunks import TrunkService
from models.db import session_scope
from voicebot.agent.store import AgentStore
from voicebot.config import Settings
from voicebot.errors import Unavailable

if TYPE_CHECKING:
    from admin_api.trunk_monitor import TrunkMonitor
    from channels.chat.service import ChatService
    from channels.email.service import EmailService
    from channels.whatsapp.service import WhatsAppService
    from rag import KnowledgeBase
    from voicebot.calls.admission import Admission
    from voicebot.llm.base import LanguageModel
    from voicebot.stt.whisper import SpeechRouter
    from voicebot.tts.piper import PiperSpeaker

T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    engine: Engine
    auth: AuthService
    agents: AgentStore
    link: AsteriskLink
    trunks: TrunkService
    dialplans: DialplanService
    flows: FlowService
    kb: KnowledgeBase | None = None
    llm: LanguageModel | None = None
    call_control: CallControl | None = None
    ami: AmiClient | None = None
    whatsapp: WhatsAppService | None = None
    email: EmailService | None = None
    chat: ChatService | None = None
    stt: SpeechRouter | None = None
    """The process's speech recognisers (the calls' own), when this process runs the voice app."""
    tts: PiperSpeaker | None = None
    asterisk_process: Any = None
    """The local Asterisk's supervisor (``snapshot()`` → state, restarts) when ``eva run`` manages Asterisk."""
    admission: Admission | None = None
    """The voice app's call slots (load and capacity), when this process runs the voice app."""
    trunk_monitor: TrunkMonitor | None = None
    """Follows the trunks' state through AMI (None when the API runs without Asterisk)."""
    started: float = field(default_factory=time.monotonic)
    owned: list[Any] = field(default_factory=list)
    """Objects this app created and closes on shutdown (e.g. its AMI client)."""

    async def db(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one transaction on a worker thread."""

        def transaction() -> T:
            with session_scope(self.engine) as session:
                return fn(session)

        return await asyncio.to_thread(transaction)

    def need_kb(self) -> KnowledgeBase:
        if self.kb is None:
            raise Unavailable(
                "the knowledge base is not running in this process", code="knowledge_unavailable"
            )
        return self.kb

    def need_llm(self) -> LanguageModel:
        if self.llm is None:
            raise Unavailable("no language model is configured in this process", code="llm_unavailable")
        return self.llm

    def need_whatsapp(self) -> WhatsAppService:
        if self.whatsapp is None:
            raise Unavailable("the WhatsApp channel is not running in this process", code="whatsapp_unavailable")
        return self.whatsapp

    def need_email(self) -> EmailService:
        if self.email is None:
            raise Unavailable("the e-mail channel is not running in this process", code="email_unavailable")
        return self.email

    def need_chat(self) -> ChatService:
        if self.chat is None:
            raise Unavailable("no language model is configured in this process, so chat cannot answer",
                              code="llm_unavailable")
        return self.chat

    def need_stt(self) -> SpeechRouter:
        if self.stt is None:
            raise Unavailable("speech recognition is not running in this process", code="stt_unavailable")
        return self.stt

    def need_tts(self) -> PiperSpeaker:
        if self.tts is None:
            raise Unavailable("speech synthesis is not running in this process", code="tts_unavailable")
        return self.tts

    def need_calls(self) -> CallControl:
        if self.call_control is None:
            raise Unavailable(
                "call control (Asterisk) is not available in this process", code="calls_unavailable"
            )
        return self.call_control
