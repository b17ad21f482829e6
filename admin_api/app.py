"""``create_app``: the admin API as an aiohttp application (served by ``eva run`` on api_host:api_port).

Every route is declared once (``admin_api.handlers``); this module mounts them under ``/api/v1`` (health and
metrics at the root), wires middlewares (metrics, CORS when configured, JSON errors) and the services.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy.engine import Engine

from admin_api.ami import AmiCallControl, AmiClient
from admin_api.asterisk_link import AsteriskLink
from admin_api.auth import AuthService, LoginLimiter
from admin_api.control import CallControl
from admin_api.dialplans import DialplanService
from admin_api.flows import FlowService
from admin_api.framework import (
    SERVICES_KEY,
    ApiRouter,
    Endpoint,
    cors_middleware,
    error_middleware,
    make_handler,
    metrics_middleware,
)
from admin_api.openapi import build_openapi, render_docs
from admin_api.services import Services
from admin_api.trunk_monitor import TrunkMonitor
from admin_api.trunks import TrunkService
from voicebot.agent.store import AgentStore
from voicebot.config import Settings
from voicebot.errors import EvaError
from voicebot.events import watch_messages
from voicebot.flows.voice import prompt_checker

if TYPE_CHECKING:
    from channels.chat.service import ChatService
    from channels.email.service import EmailService
    from channels.whatsapp.service import WhatsAppService
    from rag import KnowledgeBase
    from voicebot.calls.admission import Admission
    from voicebot.llm.base import LanguageModel
    from voicebot.stt.whisper import SpeechRouter
    from voicebot.tts.piper import PiperSpeaker

log = logging.getLogger(__name__)

ENDPOINTS_KEY: web.AppKey[list[Endpoint]] = web.AppKey("eva_endpoints")
_SPEC_KEY: web.AppKey[dict[str, Any]] = web.AppKey("eva_openapi")
_DOCS_KEY: web.AppKey[str] = web.AppKey("eva_docs")
MAX_JSON_BODY = 2 * 1024 * 1024
"""Largest JSON body (a dialplan of 256 KiB fits even fully escaped); uploads stream separately."""


def routers(settings: Settings) -> list[ApiRouter]:
    from admin_api.console import routes as console
    from admin_api.handlers import (
        agents,
        analysis,
        analytics,
        auth,
        calls,
        campaigns,
        channels,
        chat,
        contacts,
        knowledge,
        speech,
        system,
        telephony,
    )

    mounted = [
        system.router,
        auth.router,
        auth.users,
        agents.router,
        agents.routes,
        knowledge.router,
        calls.router,
        calls.conversations,
        telephony.trunks,
        telephony.dialplans,
        telephony.flows,
        channels.whatsapp,
        channels.email,
        chat.router,
        contacts.router,
        contacts.audit_router,
        analytics.router,
        analysis.router,
        campaigns.router,
        campaigns.dnc_router,
        speech.router,
        console.router,
    ]
    if settings.open_signup:
        mounted.append(auth.signup_router)
    return mounted


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    kb: KnowledgeBase | None = None,
    call_control: CallControl | None = None,
    llm: LanguageModel | None = None,
    ami: AmiClient | None = None,
    offline_asterisk: bool = False,
    login_limiter: LoginLimiter | None = None,
    whatsapp: WhatsAppService | None = None,
    email: EmailService | None = None,
    chat: ChatService | None = None,
    stt: SpeechRouter | None = None,
    tts: PiperSpeaker | None = None,
    asterisk_supervisor: Any = None,
    admission: Admission | None = None,
) -> web.Application:
    """The admin API application.

    ``kb``, ``llm`` and ``call_control`` are the running process's knowledge base, language model and
    live-call control (endpoints that need a missing one answer 503).  Asterisk is reached through ``ami``
    (default: an AMI client built from ``settings``, closed with the app); ``offline_asterisk=True`` runs
    without Asterisk: trunk and dialplan changes are written and take effect when Asterisk next starts.
    Without an explicit ``call_control``, live calls, hangup and originate go through AMI.  ``whatsapp`` and
    ``email`` are the running text channels (their endpoints answer 503 without them); their owner closes them.
    ``stt``/``tts`` are the voice app's speech engines (the speech endpoints answer 503 without them).
    ``chat`` is the process's chat channel; without one, an app given an ``llm`` answers chat with its own agent
    core over ``llm`` and ``kb``.  ``asterisk_supervisor`` (when Eva manages Asterisk) tells the health endpoints
    whether Asterisk is running; ``admission`` (the voice app's call slots) their current load and capacity.
    """
    ami_client = None if offline_asterisk else (ami or AmiClient(settings))
    link = AsteriskLink(settings, ami_client)
    if call_control is not None and not isinstance(call_control, CallControl):
        # Better AMI than a 500 on every live-call request: say so once, at start.
        log.warning("%s does not implement admin_api.control.CallControl (live_calls, hangup, originate); "
                    "live calls go through AMI instead", type(call_control).__name__)
        call_control = None
    if call_control is None and ami_client is not None:
        call_control = AmiCallControl(ami_client, settings)
    if chat is None and llm is not None:
        from channels.chat.service import ChatService
        from voicebot.agent.core import AgentCore

        chat = ChatService(engine, AgentCore(settings, engine, llm, kb))
    services = Services(
        settings=settings,
        engine=engine,
        auth=AuthService(settings, engine, limiter=login_limiter),
        agents=AgentStore(engine),
        link=link,
        trunks=TrunkService(engine, link),
        dialplans=DialplanService(link),
        flows=FlowService(engine, prompt_checker(settings)),
        kb=kb,
        llm=llm,
        call_control=call_control,
        ami=ami_client,
        whatsapp=whatsapp,
        email=email,
        chat=chat,
        stt=stt,
        tts=tts,
        asterisk_process=asterisk_supervisor,
        admission=admission,
    )
    if ami_client is not None and ami is None:
        services.owned.append(ami_client)
    if ami_client is not None:
        # Its own AMI connection (with events), started with the app and closed with it.
        monitor = TrunkMonitor(settings, engine)
        services.trunk_monitor = monitor
        services.trunks.on_change = monitor.kick
        services.owned.append(monitor)

    watch_messages()  # the console's live events hear every stored message (idempotent)
    middlewares: list[Any] = [metrics_middleware]
    if settings.api_cors_origins.strip():
        middlewares.append(cors_middleware(settings.api_cors_origins))
    middlewares.append(error_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=MAX_JSON_BODY)
    app[SERVICES_KEY] = services
    endpoints: list[Endpoint] = []
    for router in routers(settings):
        for endpoint in router.endpoints:
            app.router.add_route(endpoint.method, endpoint.aiohttp_path(), make_handler(endpoint, services))
            endpoints.append(endpoint)
    app[ENDPOINTS_KEY] = endpoints
    # Built now: the application is frozen once it serves, and the document never changes afterwards.
    app[_SPEC_KEY] = build_openapi(endpoints)
    app[_DOCS_KEY] = render_docs(app[_SPEC_KEY])
    app.on_startup.append(_sync_trunks)
    app.on_startup.append(_start_trunk_monitor)
    app.on_cleanup.append(_close_owned)
    return app


async def _sync_trunks(app: web.Application) -> None:
    """Make Asterisk's trunk file match the database (it may be missing after a fresh render)."""
    services = app[SERVICES_KEY]
    try:
        await services.trunks.sync(only_if_changed=True)
    except EvaError as exc:
        log.warning("could not sync SIP trunks into Asterisk at start: [%s] %s", exc.code, exc.message)


async def _start_trunk_monitor(app: web.Application) -> None:
    """After the trunk file is in line with the database: the monitor reads what Asterisk loaded from it."""
    monitor = app[SERVICES_KEY].trunk_monitor
    if monitor is not None:
        await monitor.start()


async def _close_owned(app: web.Application) -> None:
    for owned in app[SERVICES_KEY].owned:
        await owned.close()


def openapi_spec(app: web.Application) -> dict[str, Any]:
    return app[_SPEC_KEY]


def docs_page(app: web.Application) -> str:
    return app[_DOCS_KEY]
