"""Issue 10's end-to-end check: a 1 MB pathological mail and a 1 MB pathological Markdown upload are handled while
a real call is speaking, in the same process, and the call's outgoing audio keeps its 20 ms pacing.

The pacing is read from the call's own RTP clock (each frame's lateness against its deadline, frames skipped), so a
blocked event loop — what the old quadratic regexes did — shows up as late or skipped frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import select

from channels.email.parse_worker import ParseWorker
from models import Agent
from models.db import session_scope
from rag import KnowledgeBase
from tests.channels.test_email_attacks import redos_mail
from tests.conftest import Caller
from tests.loop_probe import stall_bound
from tests.voice.conftest import ScriptedResponder
from tests.voice.test_call_mechanics import LONG_ANSWER
from voicebot.errors import EvaError
from voicebot.media.transport import PacingStats, RtpTransport
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async

pytestmark = pytest.mark.asyncio(loop_scope="session")  # asterisk/models marks: derived (tests/conftest.py)

BRACKETS = b"[" * (1024 * 1024)


async def _pacing_of_the_live_call(runtime: EvaRuntime) -> PacingStats:
    assert runtime.voice is not None
    for _ in range(400):
        for live in list(runtime.voice.calls.values()):
            session = live.session
            if session is not None and isinstance(session.transport, RtpTransport):
                return session.transport.stats
        await asyncio.sleep(0.05)
    raise AssertionError("no call reached its media session")


async def test_hostile_mail_and_markdown_while_a_call_speaks_keep_its_audio_paced(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path]) -> None:
    responder.script = lambda text: LONG_ANSWER
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        demo = session.exec(select(Agent).where(Agent.name == "demo")).one()
        assert demo.id is not None
        agent_id = demo.id
    # Built before the call: the standard library's generator takes a while to fold a 1 MB line, and that is
    # the test's own work on the loop, not Eva's.
    raw_mail = await asyncio.to_thread(redos_mail)
    kb = KnowledgeBase(runtime.settings, runtime.engine)
    await kb.recover()
    try:
        call = asyncio.ensure_future(place_call_async(caller.script(
            "100", Action("play", at=3.0, path=str(say("Tell me about your company."))), timeout=20)))
        stats = await _pacing_of_the_live_call(runtime)
        await asyncio.sleep(6.0)  # the greeting is over and the long answer is playing
        voiced_before = stats.voiced
        mail: object
        async with ParseWorker() as worker:
            try:
                mail = await worker.parse(raw_mail)
            except EvaError as exc:  # refusing it with a reason is as good as reading it
                mail = exc
        document = await kb.ingest_bytes(agent_id, BRACKETS, "brackets.md")
        await kb.wait_idle()
        voiced_during = stats.voiced - voiced_before
        assert document.id is not None
        status = (await kb.get_document(document.id)).status
        result = await call
    finally:
        await kb.close()
    assert result.connected, result
    assert mail is not None
    assert status in ("ready", "failed")
    # Bot audio went out while the payloads were processed (the window's length depends on the machine: on a fast
    # one it was 0.5 s, so a frame count that stood for "long enough" failed there).
    assert voiced_during >= 5, f"the call was not speaking while the payloads were processed ({voiced_during} frames)"
    worst = max(max(stats.lateness_ms, default=0.0), stats.longest_stall_ms)
    print(f"\n{stats.sent} frames sent, worst lateness {worst:.1f} ms, {stats.skipped} skipped")
    # The bound: no gap of 100 ms in the caller's audio (a stall of 60 ms already makes the clock skip
    # rather than burst; on 2 busy cores that happens now and then without any hostile input), or more when
    # parallel test workers share the cores (tests/loop_probe.py).
    bound = stall_bound() * 1000
    assert worst < bound, f"the media clock woke {worst:.0f} ms after a frame's deadline (bound {bound:.0f} ms)"
