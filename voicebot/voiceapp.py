"""The ARI application: turns Asterisk events into call sessions.

For every caller channel entering ``Stasis(eva, ...)`` it resolves the agent (the route for the ``did=``
argument), records the call, answers, creates an ExternalMedia channel and a mixing bridge, optionally records
the bridge, and runs a :class:`~voicebot.pipeline.session.CallSession` in a task named ``call-<channel id>``.
Channels Eva creates itself (UnicastRTP media channels) also enter Stasis and are ignored.  Whatever happens,
teardown releases the media port, the bridge and the media channel and closes the call row.

What is trusted: Stasis arguments and caller ID are the caller's to influence.  ``agent=`` and
``direction=outbound`` are honoured only on channels Eva originated itself (proven by the ``EVA_ORIGIN``
variable, see :mod:`voicebot.ari.origin`); on every other channel the call is inbound and routed by its DID.
A designer's dialplan picks a flow or an agent with the channel variables ``EVA_FLOW``/``EVA_AGENT`` set before
``Stasis()``, never with Stasis arguments (an unfiltered ``${EXTEN}`` there lets the caller append arguments;
:mod:`voicebot.ari.handback` says why a channel variable is safe where arguments are not).  When the flow or
agent is done but the dialplan is not (``continue_dialplan``), Eva sets ``EVA_RESULT``/``EVA_VAR_<name>`` and
the channel continues at the priority after ``Stasis()``; like a transferred caller, it is not hung up.
The caller ID names a contact (with memory across calls and channels) only when the call came in on a trunk
the admin marked ``verified_caller_id``; otherwise the call remembers only itself.
A campaign call also carries its contact's variables (:attr:`VoiceApp.call_variables`, registered by the dialer
for the channel it originates; see :mod:`voicebot.pipeline.variables`): the greeting's ``{contact_<name>}``
placeholders are filled with them and the call's context hands them to the flow and the agent.

A channel can enter Stasis more than once: a transfer to a number Eva answers brings it back.  Each entry is
its own session (a new call row, generation + 1), keyed by (channel id, Stasis generation), so the first
session's row and outcome are never touched by the second.

The worker admits calls up to its capacity (:mod:`voicebot.calls.admission`, ``EVA_MAX_CALLS``): an inbound caller
beyond it is answered, hears :data:`BUSY_PROMPT` and is hung up (outcome ``busy``), so the calls in progress keep
their latency.

Eva keeps no call state that the database and Asterisk could not rebuild, so several workers can share one
Asterisk (each ARI app name is a worker) and a restarted worker closes calls it left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from models import Agent, Flow, utcnow
from models.calls import CALLER_MAX
from models.db import session_scope
from voicebot.ari import AriClient, AriEvent
from voicebot.ari.events import ChannelInfo
from voicebot.ari.handback import AGENT_VARIABLE, FLOW_VARIABLE, dialplan_variables, requested_name
from voicebot.ari.origin import ORIGIN_VARIABLE
from voicebot.asterisk.render import instance_path
from voicebot.calls import store as calls
from voicebot.calls.admission import Admission, default_capacity
from voicebot.calls.peers import PeerWatch, end_left, find_left
from voicebot.config import Settings
from voicebot.errors import AriError, EvaError, MediaError, TransferRefused
from voicebot.flows.runner import FlowRunner
from voicebot.flows.voice import FlowResponder
from voicebot.i18n import base_language, phrase
from voicebot.media.ports import PortAllocator
from voicebot.media.transport import RtpTransport
from voicebot.metrics import CALLS_ACTIVE, CALLS_CAPACITY, CALLS_TOTAL, agent_label
from voicebot.pipeline.responder import CallContext, Responder
from voicebot.pipeline.session import CallSession, SessionConfig, Stt, Tts
from voicebot.pipeline.turns import TurnConfig
from voicebot.pipeline.variables import personalize
from voicebot.tts.voices import resolve_voice

log = logging.getLogger(__name__)

NO_ROUTE_PROMPT = "eva-no-route"
NO_ROUTE_TEXT = "Sorry, this number is not in service. Goodbye."
BUSY_PROMPT = "eva-busy"
"""Played to an inbound caller when every call slot is taken (see :mod:`voicebot.calls.admission`)."""
MAX_TRANSFERS = 4
"""Transfers one channel may make into numbers Eva answers (a loop between agents ends here)."""
PROMPT_MAX_S = 15.0
"""How long a prompt played before hanging up may take, if Asterisk never says it finished."""
EXTENSION_RE = re.compile(r"^[A-Za-z0-9*#+][A-Za-z0-9*#+_.-]{0,39}$")
"""A transfer destination: a plain dialplan extension (no pattern, no comma, no context)."""


@dataclass
class LiveCall:
    call_id: int
    channel_id: str
    caller: str
    did: str
    agent_name: str
    key: tuple[str, int] = ("", 0)
    """(channel id, Stasis generation in this process): one per Stasis session of the channel."""
    generation: int = 0
    """The call row's generation (earlier Stasis sessions of this channel, from the database)."""
    started: datetime = field(default_factory=utcnow)
    agent_id: int | None = None
    flow: str = ""
    """The flow the call's route runs ('' for an agent route)."""
    transfer_targets: dict[str, str] = field(default_factory=dict)
    session: CallSession | None = None
    task: asyncio.Task[None] | None = None
    bridge_id: str = ""
    media_channel_id: str = ""
    recording: str = ""
    hangup_cause: str = ""
    hanging_up: bool = False
    """Eva itself is hanging the caller up: the hang-up events that follow are ours, not the caller's."""


@dataclass(frozen=True)
class CallIdentity:
    """Who is calling whom, as far as Eva may believe it."""

    direction: str
    caller: str
    did: str
    agent_name: str
    """Only for calls Eva placed: the agent it placed them for ('' → route by DID)."""
    endpoint: str
    """The PJSIP endpoint (trunk) the call came in on."""


def claims_origin(args: dict[str, str]) -> bool:
    """The Stasis arguments ask for what only Eva's own originate may ask for."""
    return args.get("direction") == "outbound" or "agent" in args


def call_identity(args: dict[str, str], channel: ChannelInfo, *, originated: bool) -> CallIdentity:
    """Pure: the call's direction, caller, DID and agent from its Stasis arguments and channel.

    ``originated`` says the channel carries Eva's origin proof; without it the call is inbound whatever the
    arguments say, its agent comes from the DID's route, and the caller is the channel's caller ID.  Values
    are cut to the sizes Eva stores."""
    did = args.get("did", channel.exten)[:CALLER_MAX]
    if originated and args.get("direction") == "outbound":
        # We called them: the number we dialled is the contact.
        return CallIdentity("outbound", did, did, args.get("agent", "")[:80], channel.endpoint)
    return CallIdentity("inbound", channel.caller_number[:CALLER_MAX], did,
                        args.get("agent", "")[:80] if originated else "", channel.endpoint)


class _AriCallControl:
    def __init__(self, app: VoiceApp, live: LiveCall) -> None:
        self.app = app
        self.live = live

    async def transfer_destination(self, target: str) -> str:
        return await self.app.transfer_destination(self.live, target)

    async def transfer(self, target: str) -> None:
        # A channel variable EVA_APPS shadows the dialplan's global: if the target is a number Eva answers, the
        # call comes back to this worker, which holds its slot (and, for a campaign call, its guard and variables).
        await self.app.ari.set_variable(self.live.channel_id, "EVA_APPS", self.app.ari.app)
        await self.app.ari.continue_in_dialplan(self.live.channel_id, self.app.transfer_context, target)

    async def hangup(self) -> None:
        await self.app.ari.hangup(self.live.channel_id)

    async def continue_dialplan(self, result: str, variables: dict[str, str]) -> None:
        # Every variable is set before the channel moves on: the dialplan's next priority reads them at once.
        for name, value in dialplan_variables(result, variables).items():
            await self.app.ari.set_variable(self.live.channel_id, name, value)
        await self.app.ari.continue_next(self.live.channel_id)


class VoiceApp:
    def __init__(self, settings: Settings, engine: Engine, ari: AriClient, stt: Stt, tts: Tts,
                 responder: Responder, resolve_agent: Callable[[str, str], dict[str, Any] | None]) -> None:
        """``resolve_agent(agent_name, did)`` (blocking) returns the agent's fields (id, name, greeting,
        fallback_message, voice) or None when nothing answers that DID."""
        self.settings = settings
        self.engine = engine
        self.ari = ari
        self.stt = stt
        self.tts = tts
        self.responder = responder
        self.resolve_agent = resolve_agent
        self.flows = FlowRunner(engine)
        """Runs calls' flows (the runtime gives it the LLM for extracting values from free speech)."""
        self.ports = PortAllocator(settings.media_port_start, settings.media_port_end, settings.media_host)
        self.calls: dict[tuple[str, int], LiveCall] = {}
        """Every session still running or tearing down, by (channel id, Stasis generation)."""
        self._in_stasis: dict[str, LiveCall] = {}
        """Channel id → its newest session: where the channel's events go."""
        self._generations = itertools.count(1)
        self._media_channels: set[str] = set()
        self._media_ready: dict[str, asyncio.Future[None]] = {}
        self._playbacks: dict[str, asyncio.Future[None]] = {}
        """Playback id → resolved when Asterisk reports it finished (see :meth:`_play_and_hangup`)."""
        self.listeners: list[Callable[[AriEvent], None]] = []
        """Called (synchronously, must not block) with every ARI event first: the campaign dialer follows the
        channels it originated through them, also before they are answered."""
        self.responder_wrappers: dict[str, Callable[[Responder], Responder]] = {}
        """Channel id → wraps that call's responder (the dialer's do-not-call guard on campaign calls)."""
        self.call_variables: dict[str, dict[str, str]] = {}
        """Channel id → the contact variables of a campaign call (registered by the dialer before it originates,
        see :mod:`voicebot.pipeline.variables`); honoured only on a channel Eva proved it placed itself."""
        self.stasis_gates: dict[str, Callable[[], None]] = {}
        """Channel id → called instead of starting a call on the channel's next Stasis entry (once): the dialer
        sends an answered campaign call through answering-machine detection first."""
        self.worker = f"{socket.gethostname()}:{settings.ari_app}"
        self.admission = Admission(settings.max_calls or default_capacity())
        """The worker's call slots: an inbound caller beyond them hears :data:`BUSY_PROMPT`."""
        CALLS_CAPACITY.set(self.admission.capacity)
        self.peers = PeerWatch(ari, engine, [app for app in settings.worker_apps if app != ari.app],
                               worker=self.worker)
        """Closes the calls of dead workers sharing this Asterisk (``EVA_ARI_APPS``; idle with one worker)."""
        self.transfer_context = "eva-inbound"
        self.session_config = SessionConfig(
            turn=TurnConfig(min_speech_ms=settings.barge_in_ms, end_silence_ms=settings.end_of_turn_ms),
            vad_aggressiveness=settings.vad_aggressiveness)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        closed = await asyncio.to_thread(calls.close_orphans, self.engine, self.worker)
        if closed:
            log.warning("closed %d call(s) left open by a previous run of this worker", closed)
        # Channels and bridges still in this application from a previous run (killed mid-call): nobody controls
        # them, and their callers hear silence.  Listed before the events connect, so no new call can be among
        # them (a call to an application nobody is connected to fails at once in the dialplan).  One process per
        # EVA_ARI_APP: a second one started under the same name would end the first one's calls here.
        try:
            leftover = await find_left(self.ari, self.ari.app)
        except AriError as exc:
            log.warning("could not list Asterisk's channels at start: %s", exc.message)
            leftover = ([], [])
        await self.peers.beat_now()  # alive before the first call, so no peer takes this worker for dead
        self.ari.start(self.on_event, on_connect=self.resync)
        await self.ari.wait_connected(timeout=30)
        await end_left(self.ari, leftover)
        if leftover[0] or leftover[1]:
            log.warning("a previous run of this worker left %d channel(s) and %d bridge(s) in Stasis; ended",
                        len(leftover[0]), len(leftover[1]))
        self.peers.start()

    async def resync(self) -> None:
        """After a (re)connection: calls whose channel Asterisk no longer has (it restarted, or we missed the
        hang-up while disconnected) are ended, so nothing waits for events that will never come."""
        if not self.calls:
            return
        present = {str(c.get("id", "")) for c in await self.ari.channels()}
        for live in list(self.calls.values()):
            if live.channel_id not in present:
                log.warning("call %s vanished while ARI was disconnected; ending it", live.call_id)
                live.hangup_cause = live.hangup_cause or "asterisk_lost"
                if live.session is not None:
                    live.session.end("caller_hangup")
                elif live.task is not None:
                    live.task.cancel()

    async def close(self) -> None:
        """Hang up and clean every live call, then close ARI.  Idempotent."""
        await self.peers.close()
        for live in list(self.calls.values()):
            if live.session is not None:
                live.session.end("shutdown")
            with contextlib.suppress(EvaError):
                await self.ari.hangup(live.channel_id)
        tasks = [live.task for live in self.calls.values() if live.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.ari.close()

    # ------------------------------------------------------------------ events
    async def on_event(self, event: AriEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # one listener's bug must not stop calls
                log.exception("ARI event listener failed")
        if event.type == "PlaybackFinished":
            finished = self._playbacks.get(event.playback_id)
            if finished is not None and not finished.done():
                finished.set_result(None)
            return
        channel = event.channel
        if channel is None:
            return
        if event.type == "StasisStart":
            if channel.is_media_channel or channel.id in self._media_channels:
                waiter = self._media_ready.pop(channel.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                return
            gate = self.stasis_gates.pop(channel.id, None)
            if gate is not None:
                gate()
                return
            # A channel already known here left Stasis (a transfer) and came back: a new session.  The old one
            # is ending on its own; its row is left as it is.
            new = LiveCall(call_id=0, channel_id=channel.id, caller=channel.caller_number,
                           did=event.stasis_args().get("did", channel.exten), agent_name="",
                           key=(channel.id, next(self._generations)))
            self.calls[new.key] = new
            self._in_stasis[channel.id] = new
            new.task = asyncio.create_task(self._handle_call(new, event), name=f"call-{channel.id}")
        elif event.type == "ChannelDtmfReceived":
            live = self._in_stasis.get(channel.id)
            if live is not None and live.session is not None:
                live.session.dtmf(event.digit)
        elif event.type in ("StasisEnd", "ChannelHangupRequest", "ChannelDestroyed"):
            live = self._in_stasis.get(channel.id)
            if live is None:
                return
            if event.type != "StasisEnd" and event.cause_txt:
                live.hangup_cause = event.cause_txt
            if live.session is not None:
                live.session.end("caller_hangup")
            elif live.task is not None and event.type != "StasisEnd" and not live.hanging_up:
                live.task.cancel()

    # ------------------------------------------------------------------ one call
    async def _handle_call(self, live: LiveCall, event: AriEvent) -> None:
        args = event.stasis_args()
        outcome = "failed"
        direction = "inbound"
        transport: RtpTransport | None = None
        counted = False
        try:
            assert event.channel is not None
            originated = await self._originated_by_eva(live, args)
            identity = call_identity(args, event.channel, originated=originated)
            direction, live.caller, live.did = identity.direction, identity.caller, identity.did
            # A channel coming back from a transfer into another Eva number was admitted already (its earlier
            # session may still be tearing down and holding that slot).
            returning = any(key[0] == live.channel_id and key != live.key for key in self.calls)
            if not self.admission.admit(live.key, placed_by_eva=originated or returning):
                outcome = "busy"
                await self._refuse_busy(live, identity)
                return
            CALLS_ACTIVE.inc()
            counted = True
            flow, agent_name = await self._dialplan_request(live, identity)
            agent = await asyncio.to_thread(self.resolve_agent, agent_name, live.did)
            verified = identity.direction == "outbound" or await asyncio.to_thread(
                calls.caller_id_verified, self.engine, identity.endpoint)
            live.call_id, live.generation = await asyncio.to_thread(
                calls.create_call, self.engine, channel_id=live.channel_id, caller=live.caller, did=live.did,
                agent_id=agent["id"] if agent else None, direction=direction, worker=self.worker)
            log.info("call %d started (agent %s)", live.call_id, agent["name"] if agent else "-")
            log.debug("call %d from %r to DID %r", live.call_id, live.caller, live.did)
            await self.ari.answer(live.channel_id)
            if agent is None:
                outcome = "no_route"
                await self._play_and_hangup(live, NO_ROUTE_PROMPT)
                return
            live.agent_name = str(agent["name"])
            live.agent_id = int(agent["id"])
            live.transfer_targets = {str(k): str(v) for k, v in dict(agent.get("transfer_targets") or {}).items()}
            live.flow = flow or str(agent.get("route_flow") or "")  # the dialplan's EVA_FLOW, else the route's
            transport = RtpTransport(self.ports, self.settings.media_format)
            await self._connect_media(live, transport)
            await asyncio.to_thread(calls.mark_answered, self.engine, live.call_id, live.recording)
            language = str(agent.get("language") or "en")
            voice = await asyncio.to_thread(resolve_voice, str(agent.get("voice", "")), language,
                                            self.settings.voices_dir)
            contact = self.call_variables.get(live.channel_id, {}) if identity.direction == "outbound" else {}
            if contact:
                log.info("call %d: %d contact variable(s) from its campaign", live.call_id, len(contact))
                log.debug("call %d: contact variables %r", live.call_id, contact)
            ctx = CallContext(call_id=live.call_id, channel_id=live.channel_id, caller=live.caller, did=live.did,
                              agent_id=int(agent["id"]), agent_name=live.agent_name,
                              greeting=personalize(str(agent.get("greeting", "")), contact),
                              fallback=str(agent.get("fallback_message", "")),
                              voice=voice, language=language, caller_verified=verified, flow=flow,
                              variables=dict(contact))

            async def persist(record: calls.TurnRecord) -> None:
                await asyncio.to_thread(calls.add_turn, self.engine, live.call_id, record)

            config = replace(self.session_config, dtmf_terminator=str(agent.get("dtmf_terminator", "#")),
                             dtmf_timeout_s=int(agent.get("dtmf_timeout_ms", 2000)) / 1000.0)
            if base_language(language) != "en":
                config = replace(config, not_heard=phrase("not_heard", language))
            # The speech model for the agent's language (tiny.en for English, the multilingual one otherwise; an
            # agent made Spanish after start loads it now, once).
            load = getattr(self.stt, "load", None)
            if load is not None and base_language(language) != "en":
                try:
                    await asyncio.to_thread(load, language)
                except EvaError as exc:
                    log.error("call %d: no speech model for %s: %s", live.call_id, language, exc.message)
            for_language = getattr(self.stt, "for_language", None)
            stt = for_language(language) if for_language is not None else self.stt
            responder = self._call_responder(live, agent)
            wrap = self.responder_wrappers.get(live.channel_id)
            if wrap is not None:
                responder = wrap(responder)
            live.session = CallSession(ctx, transport, stt, self.tts, responder,
                                       _AriCallControl(self, live), persist, config)
            transport = None  # the session owns (and closes) it now
            limit = asyncio.get_running_loop().call_later(self.settings.max_call_seconds, live.session.end,
                                                          "max_duration")
            try:
                outcome = await live.session.run()
            finally:
                limit.cancel()
            if outcome == "completed" and live.session.ending in ("caller_hangup", "max_duration", "shutdown"):
                outcome = str(live.session.ending)  # who or what ended it, not a plain "completed"
        except asyncio.CancelledError:
            outcome = "busy" if outcome == "busy" else "caller_hangup"  # a refused caller who hung up first
            raise
        except EvaError as exc:
            log.error("call %s failed: [%s] %s", live.call_id, exc.code, exc.message)
        except Exception:
            log.exception("call %s failed", live.call_id)
        finally:
            self.admission.release(live.key)
            if counted:
                CALLS_ACTIVE.dec()
            CALLS_TOTAL.inc(direction=direction, outcome=outcome, agent=agent_label(live.agent_name))
            await asyncio.shield(self._teardown(live, transport, outcome))

    async def _refuse_busy(self, live: LiveCall, identity: CallIdentity) -> None:
        """Every slot is taken: record the call (outcome ``busy``), answer, play the busy prompt, hang up.  Nothing
        here waits on a model, so the caller hears the prompt within a second however loaded the worker is."""
        log.warning("call refused: all %d call slot(s) are taken (%d refused since start)", self.admission.capacity,
                    self.admission.refused)
        agent = await asyncio.to_thread(self.resolve_agent, "", live.did)
        live.call_id, live.generation = await asyncio.to_thread(
            calls.create_call, self.engine, channel_id=live.channel_id, caller=live.caller, did=live.did,
            agent_id=agent["id"] if agent else None, direction=identity.direction, worker=self.worker)
        live.agent_name = str(agent["name"]) if agent else ""
        await self.ari.answer(live.channel_id)
        await self._play_and_hangup(live, BUSY_PROMPT)

    def _call_responder(self, live: LiveCall, agent: dict[str, Any]) -> Responder:
        """The agent's responder, or a flow runner around it when the route runs a flow or the agent starts
        flows (``start_flow``, ``flow_triggers``)."""
        start_flow = live.flow or str(agent.get("start_flow") or "")
        triggers = {str(k): [str(p) for p in v] for k, v in dict(agent.get("flow_triggers") or {}).items()
                    if isinstance(v, list)}
        if not start_flow and not triggers:
            return self.responder

        async def destination(target: str) -> str:
            return await self.transfer_destination(live, target)

        return FlowResponder(self.flows, self.responder, settings=self.settings, flow=start_flow or None,
                             from_agent=not live.flow, triggers=triggers, transfer_destination=destination)

    async def _connect_media(self, live: LiveCall, transport: RtpTransport) -> None:
        media_id = f"eva-media-{uuid.uuid4().hex[:12]}"
        self._media_channels.add(media_id)
        live.media_channel_id = media_id
        # The media channel must have entered Stasis before it can join a bridge.
        entered = asyncio.get_running_loop().create_future()
        self._media_ready[media_id] = entered
        live.bridge_id = f"eva-bridge-{uuid.uuid4().hex[:12]}"
        await self.ari.create_bridge(live.bridge_id)
        await self.ari.add_to_bridge(live.bridge_id, [live.channel_id])
        reply = await self.ari.external_media(media_id, transport.external_host, self.settings.media_format)
        variables = reply.get("channelvars") or {}
        host = variables.get("UNICASTRTP_LOCAL_ADDRESS") or await self.ari.get_variable(
            media_id, "UNICASTRTP_LOCAL_ADDRESS")
        port = variables.get("UNICASTRTP_LOCAL_PORT") or await self.ari.get_variable(
            media_id, "UNICASTRTP_LOCAL_PORT")
        transport.set_remote(str(host), int(port))
        try:
            await asyncio.wait_for(entered, timeout=5.0)
        except TimeoutError as exc:
            raise MediaError("the ExternalMedia channel never entered Stasis", code="media_setup_timeout") from exc
        finally:
            self._media_ready.pop(media_id, None)
        await self.ari.add_to_bridge(live.bridge_id, [media_id])
        if self.settings.record_calls:
            name = f"call-{live.call_id}"
            await self.ari.record_bridge(live.bridge_id, name)
            live.recording = str(self.settings.recordings_dir / f"{name}.wav")

    async def _play_and_hangup(self, live: LiveCall, prompt: str) -> None:
        sound = f"sound:{instance_path(self.settings)}/sounds/{prompt}"
        playback_id = f"eva-pb-{uuid.uuid4().hex[:12]}"
        # Registered before the request: Asterisk may report a short prompt finished before the POST returns.
        finished = self._playbacks[playback_id] = asyncio.get_running_loop().create_future()
        try:
            await self.ari.request("POST", f"channels/{live.channel_id}/play/{playback_id}",
                                   params={"media": sound})
            # Hang up when the whole prompt was played (however long it is), not after a guessed time.  The
            # caller may hang up first (this task is cancelled); a lost event costs at most PROMPT_MAX_S.
            try:
                await asyncio.wait_for(finished, timeout=PROMPT_MAX_S)
            except TimeoutError:
                log.warning("call %s: no PlaybackFinished for %s after %.0f s; hanging up", live.call_id,
                            prompt, PROMPT_MAX_S)
        finally:
            self._playbacks.pop(playback_id, None)
        live.hanging_up = True  # the ChannelHangupRequest may arrive before the DELETE's answer
        await self.ari.hangup(live.channel_id)

    async def _teardown(self, live: LiveCall, transport: RtpTransport | None, outcome: str) -> None:
        if transport is not None:
            await transport.close()
        if live.recording:
            with contextlib.suppress(EvaError):
                await self.ari.stop_recording(f"call-{live.call_id}")
        if live.bridge_id:
            with contextlib.suppress(EvaError):
                await self.ari.destroy_bridge(live.bridge_id)
        if live.media_channel_id:
            with contextlib.suppress(EvaError):
                await self.ari.hangup(live.media_channel_id)
        if outcome not in ("transferred", "continued"):  # such a caller lives on in the dialplan
            with contextlib.suppress(EvaError):
                await self.ari.hangup(live.channel_id)
        self._media_channels.discard(live.media_channel_id)
        forget = getattr(self.responder, "forget", None)
        if callable(forget) and live.call_id:
            forget(live.call_id)
        with contextlib.suppress(Exception):
            if live.call_id:
                await asyncio.to_thread(calls.end_call, self.engine, live.call_id, outcome=outcome,
                                        cause=live.hangup_cause)
            else:  # hung up while the row was being created: close this session's row, never an earlier one
                await asyncio.to_thread(calls.end_call_by_channel, self.engine, live.channel_id, outcome=outcome,
                                        cause=live.hangup_cause, after=live.started)
        self.calls.pop(live.key, None)
        if self._in_stasis.get(live.channel_id) is live:
            del self._in_stasis[live.channel_id]
        log.info("call %s ended: %s", live.call_id, outcome)

    # ------------------------------------------------------------------ trust
    async def _dialplan_request(self, live: LiveCall, identity: CallIdentity) -> tuple[str, str]:
        """(flow, agent name) the dialplan asked for with ``EVA_FLOW``/``EVA_AGENT`` (see
        :mod:`voicebot.ari.handback`), or Eva's own originate with ``agent=``.  Both variables are cleared
        once read: a later Stasis entry of this channel (a transfer) is routed by its own dialplan line.  A
        flow's own agent (``flows.agent_id``) answers inside it unless the dialplan named one."""
        if identity.agent_name:
            return "", identity.agent_name
        asked: dict[str, str] = {}
        for variable in (FLOW_VARIABLE, AGENT_VARIABLE):
            try:
                raw = await self.ari.get_variable(live.channel_id, variable, default="")
                if raw:
                    await self.ari.set_variable(live.channel_id, variable, "")
            except AriError as exc:
                log.warning("could not read %s of channel %s: [%s] %s", variable, live.channel_id, exc.code,
                            exc.message)
                raw = ""
            asked[variable] = requested_name(raw)
            if raw and not asked[variable]:
                log.warning("channel %s: %s is not a plain name; ignored", live.channel_id, variable)
        flow, agent_name = asked[FLOW_VARIABLE], asked[AGENT_VARIABLE]
        if flow and not agent_name:
            found = await asyncio.to_thread(_flow_agent, self.engine, flow)
            if found is None:
                log.warning("channel %s: the dialplan asked for flow %r, which does not exist or is disabled",
                            live.channel_id, flow)
                flow = ""
            agent_name = found or ""
        return flow, agent_name

    async def _originated_by_eva(self, live: LiveCall, args: dict[str, str]) -> bool:
        """True only for a channel Eva originated (its EVA_ORIGIN proof verifies).  Arguments that claim an
        outbound call or pick an agent on any other channel are a forgery (e.g. commas in a dialled number
        reaching an unfiltered ``${EXTEN}``): they are ignored and logged."""
        if not claims_origin(args):
            return False
        try:
            token = await self.ari.get_variable(live.channel_id, ORIGIN_VARIABLE, default="")
        except AriError as exc:
            log.warning("could not read %s of channel %s: [%s] %s", ORIGIN_VARIABLE, live.channel_id, exc.code,
                        exc.message)
            token = ""
        if self.ari.is_eva_origin(live.channel_id, token):
            return True
        log.warning("channel %s: ignoring Stasis arguments agent/direction on a call Eva did not place "
                    "(routing by DID)", live.channel_id)
        log.debug("channel %s: Stasis arguments %r", live.channel_id, args)
        return False

    async def transfer_destination(self, live: LiveCall, target: str) -> str:
        """Where ``target`` (the LLM's transfer request) may take this call, or TransferRefused.

        Only the agent's ``transfer_targets`` (by name, or their extensions) are reachable: never an
        arbitrary number the caller talked the model into (toll fraud), never Eva's catch-all by accident,
        never back to the same agent, and at most MAX_TRANSFERS times per channel."""
        options = tuple(live.transfer_targets)
        wanted = " ".join(target.lower().split())
        destination = next((ext for name, ext in live.transfer_targets.items()
                            if wanted and wanted in (" ".join(name.lower().split()), ext.lower())), None)
        if destination is None or not EXTENSION_RE.match(destination):
            raise TransferRefused("the agent may not transfer calls there", code="transfer_target_unknown",
                                  options=options)
        if live.generation >= MAX_TRANSFERS:
            raise TransferRefused("this call has been transferred too often", code="transfer_limit")
        routed = await asyncio.to_thread(self.resolve_agent, "", destination)
        if (routed is not None and live.agent_id is not None and int(routed["id"]) == live.agent_id
                and str(routed.get("route_flow") or "") == live.flow):
            raise TransferRefused("the destination is this same agent", code="transfer_loop",
                                  options=tuple(n for n, e in live.transfer_targets.items() if e != destination))
        return destination


def _flow_agent(engine: Engine, name: str) -> str | None:
    """Blocking: the name of flow ``name``'s agent ('' when it has none), None when no enabled flow has that
    name."""
    with session_scope(engine) as session:
        flow = session.exec(select(Flow).where(Flow.name == name, col(Flow.enabled).is_(True))).first()
        if flow is None:
            return None
        agent = session.get(Agent, flow.agent_id) if flow.agent_id is not None else None
        return agent.name if agent is not None else ""
