"""How calls end when something other than the caller ends them, on real calls into the real Asterisk.

A prompt before hanging up is played to its end; ``max_call_seconds`` cuts a call; a media channel that never
enters Stasis fails the call and hangs the caller up; a worker shutting down hangs up its callers; calls whose
hang-up was missed while the ARI connection was down are closed when it comes back; a restarted worker closes
the call rows its previous run left open.

The last three need a worker of their own that can be stopped, disconnected and restarted without disturbing
the session's ``runtime``: a second :class:`VoiceApp` under its own ARI application name, reached through its
own extension (7755) and, for the reconnect test, through a TCP proxy the test can cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from sqlmodel import col, select

from models import Call
from models.db import session_scope
from tests.conftest import Caller
from tests.voice.conftest import load, transcribe, until
from voicebot.ari import AriClient
from voicebot.asterisk.process import Asterisk
from voicebot.calls import store as calls
from voicebot.server import EvaRuntime
from voicebot.sipcaller import place_call_async
from voicebot.stt.whisper import WhisperStt
from voicebot.voiceapp import PROMPT_MAX_S, VoiceApp

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

SECOND_APP = "eva-w2"
SECOND_EXTEN = "7755"


def _last_call(runtime: EvaRuntime) -> Call:
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        call = session.exec(select(Call).order_by(col(Call.id).desc())).first()
        assert call is not None
        session.expunge(call)
        return call


def _call(runtime: EvaRuntime, call_id: int) -> Call:
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        call = session.get(Call, call_id)
        assert call is not None
        session.expunge(call)
        return call


async def _settled(voice: VoiceApp) -> None:
    await until(lambda: not voice.calls, "every call torn down")


# ---------------------------------------------------------------------------------------------- the main worker
@pytest.fixture
def long_no_route_prompt(asterisk: Asterisk) -> Iterator[str]:
    """A not-in-service prompt longer than any fixed guess of its length (6-7 s); the original is put back."""
    from voicebot.tts.piper import synthesize_to_wav

    path = asterisk.settings.sounds_dir / "eva-no-route.wav"
    original, st = path.read_bytes(), path.stat()
    text = ("Sorry, this number is not in service. Please check the number you dialled and try again later. "
            "Thank you, and goodbye.")
    synthesize_to_wav(text, path, settings=asterisk.settings, rate=8000)
    try:
        yield text
    finally:
        # Put the original back with its owner, group and mode: Asterisk reads it through its own group.
        path.write_bytes(original)
        os.chown(path, st.st_uid, st.st_gid)
        path.chmod(st.st_mode & 0o7777)


async def test_a_no_route_prompt_is_played_to_its_end_and_then_eva_hangs_up(
        runtime: EvaRuntime, caller: Caller, whisper: WhisperStt, long_no_route_prompt: str) -> None:
    prompt = load(str(runtime.settings.sounds_dir / "eva-no-route.wav"))
    assert prompt.seconds > 5.5, prompt.seconds
    result = await place_call_async(caller.script("555123", timeout=PROMPT_MAX_S + 10))
    assert result.connected and result.remote_hangup, result
    heard = transcribe(whisper, load(result.record_path)).lower()
    assert "not in service" in heard and "goodbye" in heard, heard  # the whole prompt, to its last word
    # Eva hung up when Asterisk said the playback finished, not at the safety bound.
    assert result.duration < prompt.seconds + 3, (result.duration, prompt.seconds)
    call = _last_call(runtime)
    assert call.outcome == "no_route" and call.ended_at is not None


@pytest.fixture
def short_calls(runtime: EvaRuntime) -> Iterator[float]:
    assert runtime.voice is not None
    original = runtime.voice.settings
    runtime.voice.settings = original.with_(max_call_seconds=6.0)
    try:
        yield 6.0
    finally:
        runtime.voice.settings = original


async def test_max_call_seconds_ends_a_call_that_goes_on_too_long(
        runtime: EvaRuntime, caller: Caller, short_calls: float) -> None:
    assert runtime.voice is not None
    result = await place_call_async(caller.script("100", timeout=30, record=False))
    assert result.connected and result.remote_hangup, result
    assert short_calls - 0.5 <= result.duration < short_calls + 4, result.duration
    await _settled(runtime.voice)
    call = _last_call(runtime)
    assert call.ended_at is not None and call.agent_id is not None
    assert call.outcome == "max_duration", call.outcome


class _LostEvents(dict[str, "asyncio.Future[None]"]):
    """The voice app's "media channel entered Stasis" waiters, as if Asterisk's StasisStart got lost."""

    def pop(self, key: str, default: Any = None) -> Any:
        return default


@pytest.fixture
def media_never_enters_stasis(runtime: EvaRuntime) -> Iterator[None]:
    assert runtime.voice is not None
    original = runtime.voice._media_ready
    runtime.voice._media_ready = _LostEvents()
    try:
        yield
    finally:
        runtime.voice._media_ready = original


@pytest.mark.usefixtures("media_never_enters_stasis")
async def test_a_media_channel_that_never_enters_stasis_fails_the_call_and_hangs_up(
        runtime: EvaRuntime, caller: Caller) -> None:
    assert runtime.voice is not None
    before_ports = runtime.voice.ports.in_use
    result = await place_call_async(caller.script("100", timeout=30, record=False))
    assert result.connected and result.remote_hangup, result
    assert result.duration < 15, result.duration  # the 5 s media setup bound, not the caller's patience
    await _settled(runtime.voice)
    call = _last_call(runtime)
    assert (call.outcome, call.answered_at) == ("failed", None), call
    assert call.ended_at is not None
    assert runtime.voice.ports.in_use == before_ports  # the RTP port was released
    assert not [c for c in await runtime.voice.ari.channels() if str(c.get("name", "")).startswith("UnicastRTP/")]


# ---------------------------------------------------------------------------------------------- a second worker
class CuttableProxy:
    """A TCP proxy in front of Asterisk's HTTP/ARI port whose connections the test can cut (and refuse)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.refusing = False
        self._pipes: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._pipes -= {writer, up_writer}

    def cut(self) -> None:
        """Drop every connection (the events websocket included) and refuse new ones."""
        self.refusing = True
        for pipe in list(self._pipes):
            pipe.transport.abort()

    def restore(self) -> None:
        self.refusing = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture(scope="module")
def second_app_dialplan(asterisk: Asterisk) -> Iterator[None]:
    """Extension 7755 enters the second worker's ARI application (route of DID 100: the demo agent)."""
    path = asterisk.settings.asterisk_dir / "etc" / "dialplan" / "zz-second-worker-test.conf"
    path.write_text(f"[eva-inbound]\nexten => {SECOND_EXTEN},1,Stasis({SECOND_APP},did=100)\n same => n,Hangup()\n")
    path.chmod(0o644)
    asterisk.cli("dialplan reload")
    try:
        assert SECOND_EXTEN in asterisk.cli("dialplan show eva-inbound")
        yield
    finally:
        path.unlink()
        asterisk.cli("dialplan reload")


class SecondWorker:
    """Builds VoiceApps for the second ARI application, sharing the runtime's models and database."""

    def __init__(self, runtime: EvaRuntime, proxy: CuttableProxy) -> None:
        assert runtime.voice is not None and runtime.engine is not None
        self.runtime = runtime
        self.proxy = proxy
        self.settings = runtime.settings.with_(ari_app=SECOND_APP)
        self.apps: list[VoiceApp] = []

    def app(self) -> VoiceApp:
        main = self.runtime.voice
        assert main is not None and self.runtime.engine is not None
        s = self.settings
        ari = AriClient(f"http://127.0.0.1:{self.proxy.port}/ari", s.ari_user, s.ari_password, s.ari_app,
                        reconnect_initial=0.1, reconnect_max=0.5)
        app = VoiceApp(s, self.runtime.engine, ari, main.stt, main.tts, main.responder, main.resolve_agent)
        self.apps.append(app)
        return app

    async def live_call(self, app: VoiceApp) -> int:
        """The call id of the call the app is running (once its session is up)."""
        return int(await until(lambda: next((c.call_id for c in app.calls.values() if c.session is not None),
                                             0), "a live call on the second worker"))


@pytest_asyncio.fixture(loop_scope="session")
async def second_worker(runtime: EvaRuntime, second_app_dialplan: None) -> AsyncIterator[SecondWorker]:
    s = runtime.settings
    proxy = CuttableProxy(s.asterisk_host or s.bind_host, s.ari_port)
    await proxy.start()
    worker = SecondWorker(runtime, proxy)
    try:
        yield worker
    finally:
        for app in worker.apps:
            await app.close()
        await proxy.close()


async def test_shutting_down_a_worker_hangs_up_its_callers_and_closes_their_rows(
        second_worker: SecondWorker, caller: Caller) -> None:
    app = second_worker.app()
    await app.start()
    call = asyncio.ensure_future(place_call_async(caller.script(SECOND_EXTEN, timeout=30, record=False)))
    call_id = await second_worker.live_call(app)
    await app.close()
    result = await call
    assert result.connected and result.remote_hangup, result  # Eva hung up, not the caller's timeout
    assert result.duration < 20, result.duration
    assert app.calls == {}
    row = _call(second_worker.runtime, call_id)
    assert row.ended_at is not None and row.outcome == "shutdown", row


async def test_a_call_hung_up_while_ari_was_disconnected_is_closed_on_reconnect(
        second_worker: SecondWorker, caller: Caller) -> None:
    runtime = second_worker.runtime
    assert runtime.voice is not None
    app = second_worker.app()
    await app.start()
    call = asyncio.ensure_future(place_call_async(caller.script(SECOND_EXTEN, timeout=30, record=False)))
    call_id = await second_worker.live_call(app)
    (live,) = [c for c in app.calls.values() if c.call_id == call_id]
    second_worker.proxy.cut()
    await until(lambda: not app.ari.connected, "the second worker to notice the lost connection")
    # The caller goes away while the worker cannot hear about it (hung up through the main worker's ARI).
    await runtime.voice.ari.hangup(live.channel_id)
    result = await call
    assert result.connected and result.remote_hangup, result
    await asyncio.sleep(0.5)  # (events the worker would have had in this time are lost for good)
    assert live.key in app.calls and _call(runtime, call_id).ended_at is None  # it missed the hang-up
    second_worker.proxy.restore()
    await app.ari.wait_connected(timeout=15)
    await _settled(app)
    row = _call(runtime, call_id)
    assert row.ended_at is not None, row
    assert row.hangup_cause == "asterisk_lost", row


async def test_a_restarted_worker_closes_the_calls_its_previous_run_left_open(
        second_worker: SecondWorker) -> None:
    runtime = second_worker.runtime
    assert runtime.engine is not None
    crashed = second_worker.app()  # never started: it only names the worker whose run "crashed"
    # The rows a run that was killed mid-call leaves behind: created as every call's is, never ended.
    left_open = [(await asyncio.to_thread(calls.create_call, runtime.engine, channel_id=f"lost-{i}", caller="caller",
                                          did="100", agent_id=None, worker=crashed.worker))[0] for i in range(2)]
    other_worker = (await asyncio.to_thread(calls.create_call, runtime.engine, channel_id="other-worker",
                                            caller="caller", did="100", agent_id=None, worker="elsewhere:eva"))[0]
    try:
        restarted = second_worker.app()
        await restarted.start()
        for call_id in left_open:
            row = _call(runtime, call_id)
            assert row.ended_at is not None and row.outcome == "failed", row
            assert row.hangup_cause == "eva_restart", row
        # Another worker's open call is that worker's business (it may be running).
        assert _call(runtime, other_worker).ended_at is None
    finally:
        await asyncio.to_thread(calls.end_call, runtime.engine, other_worker, outcome="failed")
