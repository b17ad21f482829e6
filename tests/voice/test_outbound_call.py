"""Outbound calls end to end: the admin API's ``POST /calls/outgoing`` with the ARI call control ``eva run`` uses,
through a SIP trunk, answered by a real pjsua2 callee.

The callee listens on its own loopback address and port; the trunk (created through the API, as an admin would)
points at it.  What is proven: Asterisk dials the trunk, the answered channel enters Eva's app as an *outbound*
call of the requested agent (the origin proof verified), the call row says so, and the callee hears the agent's
greeting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlmodel import col, select

from models import Call
from models.db import session_scope
from tests.api.conftest import Api, voice_admin_api
from tests.voice.conftest import heard_phrase, load, transcribe
from voicebot.agent import store
from voicebot.harness import free_udp_port, start_callee
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, CallScript
from voicebot.stt.whisper import WhisperStt

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

CALLEE_IP = "127.0.0.23"
"""Not the local carrier's address (127.0.0.1): the trunk's identify rule must not claim the carrier's calls."""
NUMBER = "+15551230001"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(runtime: EvaRuntime) -> AsyncIterator[Api]:
    """The admin API on the voice runtime's database, placing calls through ARI (as ``eva run`` wires it)."""
    async with voice_admin_api(runtime) as api:
        yield api






async def test_an_outgoing_call_is_answered_and_the_callee_hears_the_agents_greeting(
        api: Api, runtime: EvaRuntime, whisper: WhisperStt, tmp_path: Path) -> None:
    assert runtime.engine is not None
    port = free_udp_port(CALLEE_IP)
    status, trunk = await api.call("POST", "/api/v1/sip/trunks", json={"name": "callee", "host": CALLEE_IP,
                                                                       "port": port})
    assert status == 201, trunk
    with session_scope(runtime.engine) as session:
        demo_id = int(store.get_agent_by_name(session, "demo").id or 0)
    # The callee answers, listens to the greeting, and hangs up once Eva has been quiet for a moment.
    callee = await start_callee(CallScript(
        uri="", answer=True, bind_ip=CALLEE_IP, bind_port=port, record_path=str(tmp_path / "callee.wav"),
        timeout=25, actions=(Action("hangup", when_quiet=2.5),)))
    status, placed = await api.call("POST", "/api/v1/calls/outgoing", json={
        "agent_id": demo_id, "number": NUMBER, "trunk_id": trunk["id"], "caller_id": "+15550009999",
        "timeout_s": 15})
    assert (status, placed["status"]) == (202, "originating"), placed
    result = await callee
    assert result.connected and not result.remote_hangup, result  # answered, and the callee ended it
    assert "+15550009999" in result.remote_uri, result.remote_uri  # the caller ID Eva asked for
    heard = transcribe(whisper, load(result.record_path)).lower()
    assert heard_phrase(heard, "sunnyside bike shop", 0.7) and "help you" in heard, heard  # the demo greeting

    with session_scope(runtime.engine) as session:
        row = session.exec(select(Call).where(Call.channel_id == placed["channel_id"])
                           .order_by(col(Call.id).desc())).first()
        assert row is not None, placed
        assert (row.direction, row.caller, row.did, row.agent_id) == ("outbound", NUMBER, NUMBER, demo_id), row
        assert row.answered_at is not None
    for _ in range(100):
        with session_scope(runtime.engine) as session:
            ended = session.get(Call, row.id)
            if ended is not None and ended.ended_at is not None:
                assert ended.outcome == "caller_hangup", ended.outcome  # the callee hung up
                break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the outbound call's row was never closed")
