"""The ARI application: turns Asterisk events into call sessions.

For every caller channel entering ``Stasis(eva, ...)`` it resolves the agent (``agent=`` argument, else the route
for the DID), records the call, answers, creates an ExternalMedia channel and a mixing bridge, optionally records
the bridge, and runs a :class:`~voicebot.pipeline.session.CallSession` in a task named ``call-<channel id>``.
Channels Eva creates itself (UnicastRTP media channels) also enter Stasis and are ignored.  Whatever happens,
teardown releases the media port, the bridge and the media channel and closes the call row.

Eva keeps no call state that the database and Asterisk could not rebuild, so several workers can share one
Asterisk (each ARI app name is a worker) and a restarted worker closes calls it left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.engine import Engine

from voicebot.ari import AriClient, AriEvent
from voicebot.asterisk.render import instance_path
from voicebot.calls import store as calls
from voicebot.config import Settings
from voicebot.errors import EvaError, MediaError
from voicebot.media.ports import PortAllocator
from voicebot.media.transport import RtpTransport
from voicebot.metrics import CALLS_ACTIVE, CALLS_TOTAL
from voicebot.pipeline.responder import CallContext, Responder
from voicebot.pipeline.session import CallSession, SessionConfig, Stt, Tts
from voicebot.pipeline.turns import TurnConfig

log = logging.getLogger(__name__)

NO_ROUTE_PROMPT = "eva-no-route"
NO_ROUTE_TEXT = "Sorry, this number is not in service. Goodbye."


@dataclass
class LiveCall:
    call_id: int
    channel_id: str
    caller: str
    did: str
    agent_name: str
    session: CallSession | None = None
    task: asyncio.Task[None] | None = None
    bridge_id: str = ""
    media_channel_id: str = ""
    recording: str = ""
    hangup_cause: str = ""


class _AriCallControl:
    def __init__(self, app: VoiceApp, live: LiveCall) -> None:
        self.app = app
        self.live = live

    async def transfer(self, target: str) -> None:
        await self.app.ari.continue_in_dialplan(self.live.channel_id, self.app.transfer_context, target)

    async def hangup(self) -> None:
        await self.app.ari.hangup(self.live.channel_id)


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
        self.ports = PortAllocator(settings.media_port_start, settings.media_port_end, settings.media_host)
        self.calls: dict[str, LiveCall] = {}
        self._media_channels: set[str] = set()
        self._media_ready: dict[str, asyncio.Future[None]] = {}
        self.worker = f"{socket.gethostname()}:{settings.ari_app}"
        self.transfer_context = "eva-inbound"
        self.session_config = SessionConfig(
            turn=TurnConfig(min_speech_ms=settings.barge_in_ms, end_silence_ms=settings.end_of_turn_ms),
            vad_aggressiveness=settings.vad_aggressiveness)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        closed = await asyncio.to_thread(calls.close_orphans, self.engine, self.worker)
        if closed:
            log.warning("closed %d call(s) left open by a previous run of this worker", closed)
        self.ari.start(self.on_event, on_connect=self.resync)
        await self.ari.wait_connected(timeout=30)

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
        channel = event.channel
        if channel is None:
            return
        if event.type == "StasisStart":
            if channel.is_media_channel or channel.id in self._media_channels:
                waiter = self._media_ready.pop(channel.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                return
            if channel.id in self.calls:
                return
            new = LiveCall(call_id=0, channel_id=channel.id, caller=channel.caller_number,
                           did=event.stasis_args().get("did", channel.exten), agent_name="")
            self.calls[channel.id] = new
            new.task = asyncio.create_task(self._handle_call(new, event), name=f"call-{channel.id}")
        elif event.type == "ChannelDtmfReceived":
            live = self.calls.get(channel.id)
            if live is not None and live.session is not None:
                live.session.dtmf(event.digit)
        elif event.type in ("StasisEnd", "ChannelHangupRequest", "ChannelDestroyed"):
            if event.type != "StasisEnd" and event.cause_txt and channel.id in self.calls:
                self.calls[channel.id].hangup_cause = event.cause_txt
            live = self.calls.get(channel.id)
            if live is not None and live.session is not None:
                live.session.end("caller_hangup")
            elif live is not None and live.task is not None and event.type != "StasisEnd":
                live.task.cancel()

    # ------------------------------------------------------------------ one call
    async def _handle_call(self, live: LiveCall, event: AriEvent) -> None:
        CALLS_ACTIVE.inc()
        args = event.stasis_args()
        outcome = "failed"
        direction = "inbound"
        transport: RtpTransport | None = None
        try:
            agent = await asyncio.to_thread(self.resolve_agent, args.get("agent", ""), live.did)
            direction = "outbound" if args.get("direction") == "outbound" else direction
            if direction == "outbound":
                live.caller = live.did  # we called them: the number is the contact
            live.call_id = await asyncio.to_thread(
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
            transport = RtpTransport(self.ports, self.settings.media_format)
            await self._connect_media(live, transport)
            await asyncio.to_thread(calls.mark_answered, self.engine, live.call_id, live.recording)
            ctx = CallContext(call_id=live.call_id, channel_id=live.channel_id, caller=live.caller, did=live.did,
                              agent_id=int(agent["id"]), agent_name=live.agent_name,
                              greeting=str(agent.get("greeting", "")), fallback=str(agent.get("fallback_message", "")),
                              voice=str(agent.get("voice", "")))

            async def persist(record: calls.TurnRecord) -> None:
                await asyncio.to_thread(calls.add_turn, self.engine, live.call_id, record)

            config = replace(self.session_config, dtmf_terminator=str(agent.get("dtmf_terminator", "#")),
                             dtmf_timeout_s=int(agent.get("dtmf_timeout_ms", 2000)) / 1000.0)
            live.session = CallSession(ctx, transport, self.stt, self.tts, self.responder,
                                       _AriCallControl(self, live), persist, config)
            transport = None  # the session owns (and closes) it now
            limit = asyncio.get_running_loop().call_later(self.settings.max_call_seconds, live.session.end,
                                                          "max_duration")
            try:
                outcome = await live.session.run()
            finally:
                limit.cancel()
            if outcome == "completed" and live.session.ending == "caller_hangup":
                outcome = "caller_hangup"
        except asyncio.CancelledError:
            outcome = "caller_hangup"
            raise
        except EvaError as exc:
            log.error("call %s failed: [%s] %s", live.call_id, exc.code, exc.message)
        except Exception:
            log.exception("call %s failed", live.call_id)
        finally:
            CALLS_ACTIVE.dec()
            CALLS_TOTAL.inc(direction=direction, outcome=outcome)
            await asyncio.shield(self._teardown(live, transport, outcome))

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
        await self.ari.request("POST", f"channels/{live.channel_id}/play/{playback_id}", params={"media": sound})
        # Prompt length bound: a short sentence; the caller may hang up earlier.
        await asyncio.sleep(4.0)
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
        if outcome != "transferred":  # a transferred caller lives on in the dialplan
            with contextlib.suppress(EvaError):
                await self.ari.hangup(live.channel_id)
        self._media_channels.discard(live.media_channel_id)
        forget = getattr(self.responder, "forget", None)
        if callable(forget):
            forget(live.channel_id)
        with contextlib.suppress(Exception):
            if live.call_id:
                await asyncio.to_thread(calls.end_call, self.engine, live.call_id, outcome=outcome,
                                        cause=live.hangup_cause)
            else:  # hung up while the row was being created: close it by channel
                await asyncio.to_thread(calls.end_call_by_channel, self.engine, live.channel_id, outcome=outcome,
                                        cause=live.hangup_cause)
        self.calls.pop(live.channel_id, None)
        log.info("call %s ended: %s", live.call_id, outcome)
