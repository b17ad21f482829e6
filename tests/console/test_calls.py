"""The dashboard, the calls list and a call's page in a real browser, over calls written to the database with the
voice loop's own store functions (``voicebot.calls.store``, which also publish the live events the page hears).

What the screens show is compared with what was seeded: counts, the agent's name, the turns' texts and stage
times, the recording's length; a call created while the dashboard is open must appear without a reload."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
from playwright.async_api import Browser, Page, expect
from sqlalchemy.engine import Engine

from admin_api.control import LiveCall, OriginateRequest
from models import Call, Conversation, FlowRun, Message, utcnow
from models.db import session_scope
from tests.api.conftest import offline_settings, start_api
from tests.console.conftest import AUDIO_DURATION, PHONE, Console, close_console, open_console, shot
from voicebot.audio import Audio, write_wav
from voicebot.calls.store import TurnRecord, add_turn, create_call, end_call, mark_answered

RECORDING_SECONDS = 6.0
GREETING = "Hello, this is Eva at the bike shop. How can I help?"
QUESTION = "When do you open on Saturday?"
ANSWER = "We open at nine on Saturday and close at four in the afternoon."
HEARD = "We open at nine on Saturday"
SECOND_QUESTION = "Can I bring my bike in for a repair?"
SECOND_ANSWER = "Yes, bring it any weekday morning."
STAGES = {"stt_done": 180.0, "llm_first_token": 420.0, "first_sentence_ready": 610.0, "tts_first_audio": 730.0,
          "first_frame_out": 790.0}
VARIABLES = {"bike": "red city bike", "day": "Tuesday"}
SECOND_STAGES = {"stt_done": 150.0, "llm_first_token": 380.0, "first_sentence_ready": 540.0,
                 "tts_first_audio": 650.0, "first_frame_out": 710.0}


@dataclass
class Seeded:
    frontdesk: int
    sales: int
    answered: int
    failed: int
    outbound: int


async def make_agent(console: Console, name: str) -> int:
    status, agent = await console.api.call("POST", "/api/v1/agents", json={"name": name})
    assert status == 201, agent
    return int(agent["id"])


def seed(console: Console, frontdesk: int, sales: int) -> tuple[int, int, int]:
    """Three calls: an answered inbound call with a greeting and two timed turns (the first interrupted) and a
    recording; an inbound call that failed unanswered; an answered outbound call of another agent."""
    engine = console.api.engine
    recordings = console.api.settings.recordings_dir
    recordings.mkdir(parents=True, exist_ok=True)
    rate = 8000
    tone = (np.sin(np.arange(int(RECORDING_SECONDS * rate)) * 2 * np.pi * 440 / rate) * 3000).astype(np.int16)
    write_wav(recordings / "seeded.wav", Audio(tone, rate))

    answered, _ = create_call(engine, channel_id="chan-1", caller="+15550001111", did="100", agent_id=frontdesk)
    mark_answered(engine, answered, str(recordings / "seeded.wav"))
    now = utcnow()
    add_turn(engine, answered, TurnRecord(index=0, kind="greeting", bot_text=GREETING, spoken_text=GREETING))
    add_turn(engine, answered, TurnRecord(index=1, user_text=QUESTION, bot_text=ANSWER, spoken_text=HEARD,
                                          interrupted=True, speech_end=now + timedelta(seconds=2),
                                          timings_ms=STAGES))
    add_turn(engine, answered, TurnRecord(index=2, user_text=SECOND_QUESTION, bot_text=SECOND_ANSWER,
                                          spoken_text=SECOND_ANSWER, speech_end=now + timedelta(seconds=4),
                                          timings_ms=SECOND_STAGES))
    with session_scope(engine) as session:  # what the agent core and a flow write during such a call
        conversation = Conversation(channel="voice", agent_id=frontdesk, external_id="chan-1")
        session.add(conversation)
        session.flush()
        session.add(Message(conversation_id=conversation.id or 0, role="assistant", text=SECOND_ANSWER,
                            tool_calls=[{"id": "t1", "name": "transfer_call", "arguments": {"target": "workshop"}}]))
        session.add(FlowRun(flow_name="repair-booking", channel="voice", call_id=answered, status="ended",
                            step="confirm", result="booked", variables=VARIABLES))
        call = session.get(Call, answered)
        assert call is not None
        call.conversation_id = conversation.id
    end_call(engine, answered, outcome="completed", cause="normal_clearing")

    failed, _ = create_call(engine, channel_id="chan-2", caller="+15550002222", did="100", agent_id=frontdesk)
    end_call(engine, failed, outcome="failed", cause="tts_unavailable")

    outbound, _ = create_call(engine, channel_id="chan-3", caller="+15550003333", did="+15557654321",
                              agent_id=sales, direction="outbound")
    mark_answered(engine, outbound)
    end_call(engine, outbound, outcome="caller_hangup", cause="normal_clearing")
    return answered, failed, outbound


async def stat(page: Page, key: str) -> str:
    return (await page.locator(f'[data-stat="{key}"] .value').inner_text()).strip()


async def test_dashboard_calls_and_call_detail_show_the_seeded_calls(console: Console) -> None:
    frontdesk = await make_agent(console, "frontdesk")
    sales = await make_agent(console, "sales-line")
    answered, failed, _outbound = await asyncio.to_thread(seed, console, frontdesk, sales)

    page = await console.sign_in("viewer")
    await expect(page.locator('[data-stat="calls-week"] .value')).to_have_text("3")
    assert await stat(page, "calls-today") == "3"
    assert await stat(page, "answered") == "2"
    assert await page.locator('[data-stat="answered"] .label').inner_text() == "Answered (67 %)"
    assert await stat(page, "failed") == "1"
    assert await stat(page, "barge-ins") == "1"
    # The mean of the two timed turns' first frames: (790 + 710) / 2.
    assert await stat(page, "latency-avg") == "750 ms"
    busiest = page.locator("figure", has_text="Busiest agents")
    assert await busiest.get_by_role("row").nth(1).inner_text() == "frontdesk\t2"
    assert "sales-line" in await busiest.inner_text()
    channels = page.locator("figure", has_text="Volume per channel")
    assert "Voice calls\t3" in await channels.locator("table").inner_text()
    errors = page.locator(".dash-errors")
    await expect(errors.get_by_role("cell", name="tts_unavailable")).to_be_visible()
    # Offline API (no Asterisk): the panel says why instead of breaking the page.
    await expect(page.locator(".dash-live")).to_contain_text("Live calls are not available")
    assert await page.get_by_role("button", name=re.compile("Hang up")).count() == 0
    await shot(page, "dashboard")

    # Live: a call started now reaches the open dashboard through the event stream, no reload.
    engine = console.api.engine
    await asyncio.to_thread(create_call, engine, channel_id="chan-4", caller="+15550004444", did="100",
                            agent_id=sales)
    await expect(page.locator('[data-stat="calls-week"] .value')).to_have_text("4")
    await expect(page.locator('[data-stat="calls-today"] .value')).to_have_text("4")

    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await page.get_by_role("button", name="Menu").wait_for()
    await shot(page, "dashboard-phone")
    await page.set_viewport_size({"width": 1280, "height": 900})

    # The list: all four, then filtered (the filters stay in the address and survive a reload).
    await page.get_by_role("link", name="Calls").click()
    await page.get_by_role("heading", name="Calls", exact=True, level=1).wait_for()
    await expect(page.locator(".calls-summary")).to_have_text("1–4 of 4 calls")
    await page.get_by_label("Outcome").select_option("failed")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator(".calls-summary")).to_have_text("1 call")
    assert "outcome=failed" in page.url
    await page.reload()
    await expect(page.locator(".calls-summary")).to_have_text("1 call")
    assert await page.get_by_label("Outcome").input_value() == "failed"
    rows = page.locator(".calls-results tbody tr")
    assert "+15550002222" in await rows.first.inner_text()
    await page.get_by_role("button", name="Clear").click()
    await page.get_by_label("Agent").select_option(str(sales))
    await page.get_by_label("Direction").select_option("outbound")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator(".calls-summary")).to_have_text("1 call")
    assert "+15550003333" in await rows.first.inner_text()
    await page.get_by_role("button", name="Clear").click()
    await page.get_by_label("Caller number starts with").fill("+1555000111")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator(".calls-summary")).to_have_text("1 call")
    await page.get_by_role("button", name="Clear").click()
    await expect(page.locator(".calls-summary")).to_have_text("1–4 of 4 calls")
    await shot(page, "calls")

    # The call: transcript turn by turn, what was heard before the interruption, the stage chart, the recording.
    await page.locator(f'a[href="#/calls/{answered}"]').click()
    await page.get_by_role("heading", name=f"Call {answered}").wait_for()
    turns = page.locator(".transcript > li")
    await expect(turns).to_have_count(3)
    assert GREETING in await turns.nth(0).inner_text()
    second = await turns.nth(1).inner_text()
    assert QUESTION in second and ANSWER in second and "interrupted" in second
    assert f"Heard before the interruption: {HEARD}" in second
    assert "Heard before" not in await turns.nth(2).inner_text()
    chart = page.locator("figure.chart-stacked")
    assert await chart.locator("svg[role=img] > title").text_content() == \
        "Stage timings per turn (ms after the caller stopped speaking)"
    await expect(chart.locator("g.bar")).to_have_count(2)  # the greeting has no timings
    cells = await chart.locator("table tbody tr").first.locator("td").all_inner_texts()
    assert cells == [f"{round(v)} ms" for v in STAGES.values()]
    duration = await page.evaluate(AUDIO_DURATION)
    assert abs(duration - RECORDING_SECONDS) < 0.1, duration
    ticks = page.locator(".turn-track.placed .turn-tick")
    await expect(ticks).to_have_count(3)
    await page.get_by_role("button", name=re.compile(r"Play turn 3 \(speech\) from 0:0[34]")).click()
    position = await page.evaluate("() => document.querySelector('audio').currentTime")
    assert 3.0 <= position <= RECORDING_SECONDS, position
    flows = page.get_by_role("region", name="Flow variables")
    await expect(flows).to_contain_text("repair-booking")
    for name, value in VARIABLES.items():
        assert await flows.get_by_role("row", name=f"{name} {value}").count() == 1
    tools = page.get_by_role("region", name="Tool calls and transfers")
    await expect(tools.get_by_role("cell", name="transfer_call transfer")).to_be_visible()
    await expect(tools).to_contain_text('{"target":"workshop"}')
    assert "tts_unavailable" not in await page.locator(".facts").inner_text()
    assert "normal_clearing" in await page.locator(".facts").inner_text()
    await shot(page, "call-detail")
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await shot(page, "call-detail-phone")
    await page.set_viewport_size({"width": 1280, "height": 900})

    await page.goto(f"{console.base}/#/calls/{failed}")
    await page.get_by_role("heading", name=f"Call {failed}").wait_for()
    await expect(page.get_by_text("This call has no recording.")).to_be_visible()
    await expect(page.locator(".facts")).to_contain_text("tts_unavailable")


async def test_an_open_call_page_follows_the_call_live(console: Console) -> None:
    agent = await make_agent(console, "frontdesk")
    engine = console.api.engine
    call_id, _ = await asyncio.to_thread(create_call, engine, channel_id="live-1", caller="+15550009999",
                                         did="100", agent_id=agent)
    await asyncio.to_thread(mark_answered, engine, call_id)
    page = await console.sign_in("admin")
    await page.goto(f"{console.base}/#/calls/{call_id}")
    await page.get_by_role("heading", name=f"Call {call_id}").wait_for()
    await expect(page.locator(".call-status")).to_contain_text("still going on")
    await expect(page.get_by_text("No turns yet.")).to_be_visible()
    await asyncio.to_thread(add_turn, engine, call_id, TurnRecord(
        index=1, user_text=QUESTION, bot_text=ANSWER, spoken_text=ANSWER, speech_end=utcnow(), timings_ms=STAGES))
    await expect(page.locator(".transcript > li")).to_have_count(1)
    await expect(page.locator(".transcript")).to_contain_text(ANSWER)
    await expect(page.locator("figure.chart-stacked g.bar")).to_have_count(1)
    await asyncio.to_thread(end_call, engine, call_id, outcome="caller_hangup", cause="normal_clearing")
    await expect(page.locator(".facts")).to_contain_text("caller hangup")
    await expect(page.locator(".call-status")).to_have_text("")


@dataclass
class FakeAsterisk:
    """Call control with one live channel; hanging it up ends its call row as the voice loop would."""

    engine: Engine
    live: list[LiveCall] = field(default_factory=list)
    hung_up: list[str] = field(default_factory=list)
    call_id: int = 0

    async def live_calls(self) -> list[LiveCall]:
        return list(self.live)

    async def hangup(self, channel_id: str) -> None:
        self.hung_up.append(channel_id)
        self.live = [c for c in self.live if c.channel_id != channel_id]
        await asyncio.to_thread(end_call, self.engine, self.call_id, outcome="completed", cause="admin_hangup")

    async def originate(self, request: OriginateRequest) -> str:
        raise AssertionError("not used")


async def test_live_calls_panel_hangs_up_for_admins_only(
        tmp_path: Path, sqlite_engine: Engine, browser: Browser) -> None:
    fake = FakeAsterisk(sqlite_engine)
    api = await start_api(offline_settings(tmp_path / "data"), sqlite_engine, offline_asterisk=True,
                          call_control=fake)
    viewer = await open_console(api, browser)
    admin = await open_console(api, browser)
    try:
        fake.call_id, _ = await asyncio.to_thread(create_call, sqlite_engine, channel_id="1700000000.7",
                                                  caller="+15550007777", did="100", agent_id=None)
        await asyncio.to_thread(mark_answered, sqlite_engine, fake.call_id)
        fake.live = [LiveCall(channel_id="1700000000.7", channel="PJSIP/carrier-00000007", state="Up",
                              caller="+15550007777", did="100", duration_s=42.0)]
        seen = await viewer.sign_in("viewer")
        panel = seen.locator(".dash-live")
        link = panel.get_by_role("link", name="+15550007777")
        await expect(link).to_have_attribute("href", f"#/calls/{fake.call_id}")
        assert await panel.get_by_role("button").count() == 0
        page = await admin.sign_in("admin")
        live = page.locator(".dash-live")
        await expect(live).to_contain_text("42 s")
        await live.get_by_role("button", name="Hang up the call from +15550007777").click()
        await expect(live).to_contain_text("Nobody is on the phone right now.")
        assert fake.hung_up == ["1700000000.7"]
        # The viewer's dashboard heard the call end too.
        await expect(panel).to_contain_text("Nobody is on the phone right now.")
    finally:
        try:
            await close_console(viewer)
            await close_console(admin)
        finally:
            await api.client.close()
