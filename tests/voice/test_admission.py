"""Admission control on real calls: with every call slot taken, the next caller hears the busy prompt at once and
is hung up, the call in progress goes on, the refusal is recorded, and the health endpoint shows the load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import col, select

from models import Call
from models.db import session_scope
from tests.api.conftest import voice_admin_api
from tests.conftest import Caller
from tests.voice.conftest import ScriptedResponder, load, transcribe, until
from voicebot.audio import voiced_regions
from voicebot.calls.admission import Admission
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async
from voicebot.stt.whisper import WhisperStt

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def one_slot(runtime: EvaRuntime) -> Iterator[Admission]:
    """This worker admits one call at a time (the session's own slots are put back afterwards)."""
    assert runtime.voice is not None
    original = runtime.voice.admission
    runtime.voice.admission = slots = Admission(1)
    try:
        yield slots
    finally:
        runtime.voice.admission = original


async def test_a_caller_beyond_capacity_hears_the_busy_prompt_and_the_call_in_progress_goes_on(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path],
        whisper: WhisperStt, one_slot: Admission) -> None:
    responder.script = lambda text: f"You said {text}"
    first = asyncio.ensure_future(place_call_async(caller.script(
        "100", Action("play", at=6.0, path=str(say("Is anybody there?"))), Action("hangup", when_quiet=2.5),
        timeout=25)))
    await until(lambda: one_slot.active == 1, "the first call to take the slot")
    async with voice_admin_api(runtime) as api:
        status, health = await api.call("GET", "/api/v1/health", role=None)  # anonymous monitoring sees the load
        assert status == 200 and health["calls"] == {"active": 1, "capacity": 1, "refused": 0}, health
        second = await place_call_async(caller.script("100", timeout=15))
        status, health = await api.call("GET", "/api/v1/health", role=None)
        assert health["calls"]["refused"] == 1, health
    assert second.connected and second.remote_hangup, second
    recording = load(second.record_path)
    heard = transcribe(whisper, recording).lower()
    assert "busy" in heard and "goodbye" in heard, heard
    # The prompt starts at once: nothing on the refusal path waits for a model or for the call in progress.
    regions = voiced_regions(recording)
    assert regions and regions[0][0] + second.record_offset < 1.0, (regions[:1], second.record_offset)
    one = await first
    # The admitted call was not disturbed: greeted, heard, answered after the refusal.
    assert one.connected and not one.remote_hangup, one
    assert "anybody there" in transcribe(whisper, load(one.record_path)).lower()
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        rows = list(session.exec(select(Call).order_by(col(Call.id).desc()).limit(2)))
    outcomes = sorted(row.outcome for row in rows)
    assert outcomes == ["busy", "caller_hangup"], outcomes
    busy = next(row for row in rows if row.outcome == "busy")
    assert busy.ended_at is not None and busy.agent_id is not None  # counted against the agent that was called
    await until(lambda: one_slot.active == 0, "the slot to be given back")
    assert one_slot.snapshot() == {"active": 0, "capacity": 1, "admitted": 1, "refused": 1}
