"""The console on a real call (issue 14): a real SIP caller asks the demo number one question (real Asterisk,
Whisper, Piper; the scripted agent answers), then a viewer signs in, sees the call counted on the dashboard,
opens it, plays its recording (the audio element loads it and knows its length) and sees its turn's stage
timings in the chart.

It lives with the voice tests because it needs their session runtime (one Eva app per Asterisk); the browser
is started on the session's event loop, where the runtime and the admin API run.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, expect
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from models import Call, CallTurn
from models.db import session_scope
from tests.api.conftest import voice_admin_api
from tests.conftest import Caller
from tests.console.conftest import AUDIO_DURATION, chromium, close_console, open_console, shot
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async

pytestmark = pytest.mark.asyncio(loop_scope="session")  # asterisk/models/servers marks: derived from the fixtures

QUESTION = "What time do you open tomorrow?"
STAGES = ("stt_done_ms", "llm_first_token_ms", "first_sentence_ready_ms", "tts_first_audio_ms", "first_frame_out_ms")


@pytest_asyncio.fixture(loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Chromium on the session's loop (the console fixtures' own browser runs on a test's loop)."""
    async with chromium() as launched:
        yield launched


def last_call_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        return int(session.exec(select(func.max(Call.id))).one() or 0)


async def ended_call(engine: Engine, after: int, within: float = 20.0) -> tuple[Call, list[CallTurn]]:
    """The first call newer than ``after`` once its row says it ended, with its turns."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with session_scope(engine) as session:
            call = session.exec(select(Call).where(col(Call.id) > after).order_by(col(Call.id))).first()
            if call is not None and call.ended_at is not None:
                turns = list(session.exec(select(CallTurn).where(CallTurn.call_id == call.id)
                                          .order_by(col(CallTurn.index))).all())
                session.expunge_all()
                return call, turns
        assert loop.time() < deadline, "the call row did not end"
        await asyncio.sleep(0.3)


async def test_the_console_shows_a_real_call_plays_its_recording_and_charts_its_turn(
        runtime: EvaRuntime, caller: Caller, say: Callable[[str], Path], browser: Browser) -> None:
    engine = runtime.engine
    assert engine is not None
    before = last_call_id(engine)
    result = await place_call_async(caller.script(
        "100", Action("play", when_quiet=0.8, path=str(say(QUESTION))), Action("hangup", when_quiet=2.5),
        timeout=25))
    assert result.connected, result
    call, turns = await ended_call(engine, before)
    assert call.recording_path and call.answered_at is not None
    speech = [t for t in turns if t.kind == "speech" and t.first_frame_out_ms is not None]
    assert speech, [(t.kind, t.user_text) for t in turns]
    turn = speech[0]

    async with voice_admin_api(runtime) as api:
        _, today = await api.call("GET", "/api/v1/analytics", role="viewer")
        console = await open_console(api, browser)
        try:
            page = await console.sign_in("viewer")
            calls_stat = page.locator('[data-stat="calls-week"] .value')
            await expect(calls_stat).to_have_text(str(today["totals"]["calls"]))
            assert int(await calls_stat.inner_text()) >= 1
            await expect(page.locator("figure", has_text="Busiest agents")).to_contain_text("demo")
            await shot(page, "real-call-dashboard")

            await page.get_by_role("link", name="Calls").click()
            await page.get_by_role("heading", name="Calls", exact=True, level=1).wait_for()
            await page.locator(f'a[href="#/calls/{call.id}"]').click()
            await page.get_by_role("heading", name=f"Call {call.id}").wait_for()
            transcript = page.locator(".transcript")
            await expect(transcript).to_contain_text(turn.user_text)
            await expect(transcript).to_contain_text(turn.bot_text)
            assert turn.bot_text.startswith("You said:")

            # The recording: loaded through the API with the session cookie, a real length, and it plays.
            duration = await page.evaluate(AUDIO_DURATION)
            assert duration > 3, duration
            played = await page.evaluate("""() => new Promise((resolve) => {
                const audio = document.querySelector('audio');
                audio.addEventListener('timeupdate', () => {
                    if (audio.currentTime > 0.3) resolve(audio.currentTime);
                });
                audio.play().catch((e) => resolve(String(e)));
            })""")
            assert isinstance(played, float) and played > 0.3, played
            await page.evaluate("() => document.querySelector('audio').pause()")
            await expect(page.locator(".turn-track.placed .turn-tick")).not_to_have_count(0)

            # The turn chart: one bar per timed turn, its table holding this turn's stage times (rounded as
            # JavaScript rounds).
            timed = [t for t in turns if any(getattr(t, stage) is not None for stage in STAGES)]
            chart = page.locator("figure.chart-stacked")
            await expect(chart.locator("g.bar")).to_have_count(len(timed))
            header = page.get_by_role("rowheader", name=f"Turn {turn.index + 1}", exact=True)
            row = chart.locator("table tbody tr").filter(has=header)
            cells = await row.locator("td").all_inner_texts()
            assert cells == [f"{math.floor(getattr(turn, stage) + 0.5)} ms" for stage in STAGES], cells
            await shot(page, "real-call-detail")
        finally:
            await close_console(console)
