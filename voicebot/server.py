"""``eva run``: Asterisk + Eva in one foreground process.

``EvaRuntime`` assembles the pieces (database, speech models, LLM + agent core, ARI voice app, admin API) and is
also what the end-to-end tests start inside their own event loop.  ``serve()`` adds the process concerns:
starting and stopping Asterisk, signals, the ready banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from voicebot.ari import AriClient
from voicebot.config import Settings
from voicebot.media import priority
from voicebot.pipeline.responder import Responder
from voicebot.secrets import ensure_secrets
from voicebot.voiceapp import VoiceApp

if TYPE_CHECKING:
    from voicebot.campaigns.dialer import Dialer

log = logging.getLogger(__name__)


def multilingual_model_dir(settings: Settings) -> Path:
    from voicebot.stt.multilingual import model_dir

    return model_dir(settings.models_dir)


def _resolver(engine: Engine) -> Any:
    """``resolve(agent_name, did)``: the fields of the agent answering the call, or None (nothing answers).

    A DID routed to a flow resolves to the flow's agent (or, when the flow names none, the first active
    agent: it answers the flow's agent steps and gives the voice and transfer targets), with ``route_flow``
    set to the flow's name; a disabled or missing flow answers nothing."""
    from sqlmodel import col, select

    from models import Agent, Flow, Route
    from models.db import session_scope
    from voicebot.agent import store
    from voicebot.errors import NotFound

    def resolve(agent_name: str, did: str) -> dict[str, Any] | None:
        with session_scope(engine) as session:
            agent = None
            if agent_name:
                with contextlib.suppress(NotFound):
                    agent = store.get_agent_by_name(session, agent_name)
            if agent is None and did:
                route = session.exec(select(Route).where(Route.did == did, col(Route.enabled).is_(True))).first()
                if route is not None and route.flow_id is not None:
                    flow = session.get(Flow, route.flow_id)
                    if flow is None or not flow.enabled:
                        return None
                    agent = session.get(Agent, flow.agent_id) if flow.agent_id is not None else None
                    if agent is None or not agent.active:
                        agent = session.exec(select(Agent).where(col(Agent.active).is_(True))
                                             .order_by(col(Agent.id))).first()
                    if agent is None:
                        return None
                    return {**agent.model_dump(), "route_flow": flow.name}
                agent = store.agent_for_did(session, did)
            if agent is None or not agent.active:
                return None
            return agent.model_dump()

    return resolve


class EvaRuntime:
    """Everything Eva runs, minus Asterisk itself.  ``start()`` then ``close()`` (idempotent)."""

    def __init__(self, settings: Settings, *, responder: Responder | None = None, with_api: bool = True) -> None:
        self.settings = settings
        self._responder = responder
        self.with_api = with_api
        self.engine: Engine | None = None
        self.voice: VoiceApp | None = None
        self.dialer: Any = None
        """The campaign dialer (``voicebot.campaigns.dialer.Dialer``); closed before the voice app it follows."""
        self._voicemail_sound: Any = None
        """One maker of campaign voicemail sounds for every dialer this process makes: its single flight then also
        covers a dialer that replaced another while the old one still synthesizes."""
        self.closers: list[Any] = []
        self._api_runner: Any = None
        self.components: dict[str, Any] = {}

    async def start(self) -> None:
        from models.db import make_engine, upgrade
        from voicebot.stt.whisper import SpeechRouter, WhisperStt
        from voicebot.tts.piper import PiperSpeaker

        settings = self.settings
        started = time.monotonic()
        priority.configure(settings.model_nice)  # before any model thread exists: they inherit it
        priority.configure_threads(settings.speech_threads, settings.llm_threads)
        self.engine = engine = make_engine(settings.effective_database_url)
        await asyncio.to_thread(upgrade, engine)
        english = await asyncio.to_thread(WhisperStt, settings.stt_model, settings.stt_compute_type)
        stt = SpeechRouter(english, settings.stt_multilingual_model or str(multilingual_model_dir(settings)),
                           settings.stt_compute_type)
        self.closers.append(stt.close)
        self.components["stt"] = stt
        tts = PiperSpeaker(settings.tts_voice)
        self.components["tts"] = tts
        self.closers.append(tts.close)
        await tts.speak("Ready.", 8000)  # load the voice and warm ONNX before the first caller
        await self._load_languages(engine, stt, tts)
        responder = self._responder or await self._agent_responder(engine)
        ari = AriClient(settings.ari_url, settings.ari_user, settings.ari_password, settings.ari_app)
        self.voice = VoiceApp(settings, engine, ari, stt, tts, responder, _resolver(engine))
        self.voice.flows.llm = self.components.get("llm")  # flows extract values from free speech with it
        await self.voice.start()
        await self._start_dialer(engine)
        await self._start_channels(engine)
        if self.with_api:
            await self._start_api(engine)
        # Models and libraries are loaded for good: keep them out of the collector's full passes, which otherwise
        # take 0.2 s on this heap (an audible gap in every call's 20 ms media clock).
        gc.freeze()
        log.info("Eva is ready in %.1fs", time.monotonic() - started)

    async def _load_languages(self, engine: Engine, stt: Any, tts: Any) -> None:
        """Load the speech model and voice of every language an active agent speaks, before the first caller (a
        Spanish agent must not make its first caller wait seconds for Whisper base).  A language whose model
        cannot load is logged; its calls are then transcribed with the English model."""
        from sqlmodel import col, select

        from models import Agent
        from models.db import session_scope
        from voicebot.errors import EvaError
        from voicebot.i18n import base_language
        from voicebot.tts.voices import resolve_voice

        def languages() -> list[tuple[str, str]]:
            with session_scope(engine) as session:
                rows = session.exec(select(Agent.language, Agent.voice).where(col(Agent.active).is_(True))).all()
            return sorted({(str(lang or "en"), str(voice or "")) for lang, voice in rows})

        for language, voice in await asyncio.to_thread(languages):
            if base_language(language) == "en":
                continue
            try:
                await asyncio.to_thread(stt.load, language)
                key = await asyncio.to_thread(resolve_voice, voice, language, self.settings.voices_dir)
                await tts.speak(".", 8000, key)
            except EvaError as exc:
                log.error("speech for language %s is not ready: %s", language, exc.message)

    async def _agent_responder(self, engine: Engine) -> Responder:
        from voicebot.agent.core import AgentCore
        from voicebot.llm import create_llm
        from voicebot.pipeline.agent_responder import AgentResponder

        llm = await create_llm(self.settings)
        self.components["llm"] = llm
        self.closers.append(llm.close)
        kb: Any = None
        try:
            from rag import KnowledgeBase

            kb = KnowledgeBase(self.settings, engine)
            self.components["kb"] = kb
            self.closers.append(kb.close)
            resumed = await kb.recover()  # documents a previous run left half-indexed
            if resumed:
                log.info("resumed indexing of %d knowledge document(s)", len(resumed))
        except ImportError:
            log.warning("knowledge base unavailable; agents answer without it")
        await self.warm_up(llm, kb)
        core = AgentCore(self.settings, engine, llm, kb)
        self.components["core"] = core
        await self.warm_agents(engine, core)
        return AgentResponder(engine, core)

    async def warm_agents(self, engine: Engine, core: Any, limit: int = 20) -> None:
        """Evaluate each routed agent's prompt prefix now (the embedded model pins it), so no first caller
        waits seconds for it.  Best effort: a failure only means that agent's first call is slower."""
        from models.db import session_scope
        from voicebot.agent import store
        from voicebot.errors import EvaError

        def routed() -> list[Any]:
            with session_scope(engine) as session:
                ids = {r.agent_id for r in store.list_routes(session) if r.agent_id is not None}
                return [a for a in store.list_agents(session, active_only=True) if a.id in ids][:limit]

        started = time.monotonic()
        evaluated = 0
        try:
            for agent in await asyncio.to_thread(routed):
                evaluated += await core.warm_up(agent)
        except EvaError as exc:
            log.warning("could not prefill agent prompts: [%s] %s", exc.code, exc.message)
        if evaluated:
            log.info("prefilled agent prompts: %d tokens in %.1fs", evaluated, time.monotonic() - started)

    async def _start_dialer(self, engine: Engine) -> None:
        """The campaign dialer: places running voice campaigns' calls through the voice app's ARI connection."""
        self.dialer = self.new_dialer(engine)
        await self.dialer.start()

    def new_dialer(self, engine: Engine) -> Dialer:
        """A dialer wired to the voice app's hooks (opt-out guard, machine detection, contact variables): one
        place, so a dialer made again (a restart) cannot miss one."""
        from voicebot.campaigns.dialer import Dialer, voicemail_sounds

        assert self.voice is not None
        if self._voicemail_sound is None:
            self._voicemail_sound = voicemail_sounds(self.settings, self.components["tts"])
        return Dialer(engine, self.voice.ari, worker=self.voice.worker, listeners=self.voice.listeners,
                      responder_wrappers=self.voice.responder_wrappers, stasis_gates=self.voice.stasis_gates,
                      call_variables=self.voice.call_variables, voicemail_sound=self._voicemail_sound,
                      channel_capacity=self.settings.channel_capacity or None,
                      call_slots=self._free_call_slots)

    def _free_call_slots(self) -> int:
        """The voice app's free call slots now (the dialer rings only into them)."""
        return self.voice.admission.free if self.voice is not None else 0

    async def _start_channels(self, engine: Engine) -> None:
        """WhatsApp and e-mail (channels/): the IMAP poller runs when EVA_IMAP_HOST is set."""
        from channels.runtime import start_channels

        channels = await start_channels(self.settings, engine, self.components.get("core"),
                                        stt=self.components.get("stt"))
        self.components["channels"] = channels
        self.closers.append(channels.close)  # runs before the LLM and knowledge base they answer with close
        llm = self.components.get("llm")
        if self.settings.analysis and llm is not None:
            from voicebot.analysis import Analyzer
            from voicebot.analysis.worker import AnalysisWorker, model_busy

            # Only while nobody is talking to the model: no call up, no reply generating or queued.
            worker = AnalysisWorker(engine, Analyzer(llm), busy=model_busy(llm))
            await worker.start()
            self.components["analysis"] = worker
            self.closers.append(worker.close)  # closes first (closers run in reverse)

    async def warm_up(self, llm: Any, kb: Any) -> None:
        """Load the embedding model and run the LLM once now, so the first caller does not wait seconds for it."""
        from voicebot.errors import EvaError
        from voicebot.llm import ChatMessage, GenerationOptions

        warm = getattr(getattr(kb, "embedder", None), "warm_up", None)
        if warm is not None:
            await warm()
        try:
            events = llm.stream([ChatMessage("user", "Hello")], options=GenerationOptions(max_tokens=2))
            async with contextlib.aclosing(events) as stream:
                async for _ in stream:
                    pass
        except EvaError as exc:
            log.warning("LLM warm-up failed (%s); the first call will try again", exc.code)

    async def _start_api(self, engine: Engine) -> None:
        try:
            from admin_api.app import create_app
        except ImportError:
            log.warning("admin API package unavailable")
            return
        from aiohttp import web

        from voicebot.callcontrol import AriCallControl

        assert self.voice is not None
        channels = self.components.get("channels")
        app = create_app(self.settings, engine, kb=self.components.get("kb"),
                         call_control=AriCallControl(self.voice.ari), llm=self.components.get("llm"),
                         whatsapp=channels.whatsapp if channels else None, email=channels.email if channels else None,
                         chat=channels.chat if channels else None,
                         stt=self.components.get("stt"), tts=self.components.get("tts"),
                         asterisk_supervisor=self.components.get("asterisk_supervisor"),
                         admission=self.voice.admission)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.api_host, self.settings.api_port)
        await site.start()
        self._api_runner = runner

    async def close(self) -> None:
        if self._api_runner is not None:
            await self._api_runner.cleanup()
            self._api_runner = None
        if self.dialer is not None:  # before the voice app: ringing attempts end on its ARI events
            await self.dialer.close()
            self.dialer = None
        if self.voice is not None:
            await self.voice.close()
            self.voice = None
        for closer in reversed(self.closers):
            result = closer()
            if asyncio.iscoroutine(result):
                with contextlib.suppress(Exception):
                    await result
        self.closers.clear()
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None


def serve() -> int:
    """Start Asterisk, then Eva; run until Ctrl-C / SIGTERM; stop both."""
    from voicebot.asterisk.process import Asterisk
    from voicebot.setup import setup

    settings = setup(ensure_secrets(Settings.load()))
    asterisk = Asterisk(settings) if settings.manage_asterisk else None
    try:
        if asterisk is not None:
            print("Starting Asterisk ...", flush=True)
            asterisk.start()
        asyncio.run(_run(settings, asterisk))
    except KeyboardInterrupt:
        pass
    finally:
        if asterisk is not None:
            print("Stopping Asterisk ...", flush=True)
            asterisk.stop()
    print("Eva stopped.")
    return 0


def _first_run_token(settings: Settings, engine: Engine | None) -> str:
    """While no admin exists: a new one-time token for the console's setup page (admin_api.console.session)."""
    from admin_api.accounts import active_admins
    from admin_api.console.session import issue_setup_token, spend_setup_token
    from models.db import session_scope

    if engine is None:
        return ""
    with session_scope(engine) as session:
        admins = active_admins(session)
    if admins:
        spend_setup_token(settings.data_dir)  # a token left from before the first admin must not linger
        return ""
    return issue_setup_token(settings.data_dir)


async def _run(settings: Settings, asterisk: Any = None) -> None:
    from voicebot.asterisk.supervisor import AsteriskSupervisor
    from voicebot.backup import run_daily_backups

    runtime = EvaRuntime(settings)
    supervisor = AsteriskSupervisor(asterisk) if asterisk is not None else None
    if supervisor is not None:
        runtime.components["asterisk_supervisor"] = supervisor  # /health reports its state
    backups: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("Loading models and connecting to Asterisk ...", flush=True)
    try:
        await runtime.start()
        if supervisor is not None:
            supervisor.start()
        if settings.backup_every_hours > 0:
            backups = asyncio.create_task(run_daily_backups(
                settings.effective_database_url, settings.backup_dir, every_s=settings.backup_every_hours * 3600,
                keep=settings.backup_keep), name="eva-daily-backup")
        console = f"http://{settings.api_host}:{settings.api_port}/"
        first_run = await asyncio.to_thread(_first_run_token, settings, runtime.engine)
        if first_run:
            console += f"#/setup?token={first_run}   (first run: create the admin there; the link works once)"
        print(f"""
Eva is ready.
  Call the demo agent:   .venv/bin/eva call 100 --say "What are your opening hours?" --record reply.wav
  SIP (carrier trunk):   {settings.bind_host}:{settings.sip_port} (calls from {settings.local_carrier_ip})
  Web console:           {console}
  Admin API:             http://{settings.api_host}:{settings.api_port}/api/v1  (docs: /api/v1/docs)
  Stop:                  Ctrl-C
""", flush=True)
        await stop.wait()
        print("Shutting down ...", flush=True)
    finally:
        if backups is not None:
            backups.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await backups
        if supervisor is not None:
            await supervisor.close()  # before Asterisk is stopped on purpose: that is not a crash
        await runtime.close()
