"""The campaign dialer on real calls: real Asterisk, Eva's runtime (its dialer, its ARI app), SIP trunks created
through the admin API, and pjsua2 **callees** behind them -- one that answers and hears the agent, one that is
busy (486), one that rings until Eva gives up, one that asks not to be called again.

What is proven: each outcome is recorded with its cause (answered with the call row linked, busy retried per the
rule and recorded twice, no answer after the campaign's ring timeout); a do-not-call phrase said on a call puts
the number on the list, Eva apologises and hangs up, and a later campaign skips the number; a trunk that answers
503 moves the attempt to the next trunk; closing the dialer mid-campaign and starting a new one dials nobody
twice and loses no attempt.

The busy retry is due a minute later (the smallest interval a rule allows); the test moves that one row's
``due_at`` to now instead of waiting, after checking it was written a minute ahead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from models import Call, CallTurn
from models.campaigns import CampaignAttempt, CampaignEntry, DncEntry
from models.db import session_scope
from tests.api.conftest import Api, voice_admin_api
from tests.voice.conftest import heard_phrase, load, transcribe_regions
from voicebot.agent import store as agents
from voicebot.campaigns import store
from voicebot.campaigns.importer import parse_csv
from voicebot.harness import free_udp_port, start_callee
from voicebot.i18n import phrase
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, CallResult, CallScript
from voicebot.stt.whisper import WhisperStt

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

ALWAYS = {day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
RING_S = 8
OUTCOME_TABLE: list[tuple[str, str, int, str, str]] = []
"""(test, contact, attempt number, outcome, cause) of every attempt, printed at the end (the report's table)."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(runtime: EvaRuntime) -> AsyncIterator[Api]:
    """The admin API on the voice runtime's database (trunks are created through it, as an admin would)."""
    try:
        async with voice_admin_api(runtime) as api:
            yield api
    finally:
        if OUTCOME_TABLE:
            print("\ncampaign dialer outcomes (test, contact, attempt, outcome, cause):")
            for row in OUTCOME_TABLE:
                print("  " + " | ".join(str(v) for v in row))


async def callee(api: Api, name: str, ip: str, **script: Any) -> tuple[int, asyncio.Future[CallResult]]:
    """A pjsua2 callee listening on ``ip`` and a trunk (through the API) pointing at it; (trunk id, its result)."""
    port = free_udp_port(ip)
    status, trunk = await api.call("POST", "/api/v1/sip/trunks", json={"name": name, "host": ip, "port": port})
    assert status == 201, trunk
    result = await start_callee(CallScript(uri="", answer=True, bind_ip=ip, bind_port=port, **script))
    return int(trunk["id"]), result


def demo_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        return int(agents.get_agent_by_name(session, "demo").id or 0)


def make_campaign(engine: Engine, name: str, numbers: list[str], *, start: bool = True, **rules: Any) -> int:
    with session_scope(engine) as session:
        campaign = store.create_campaign(session, {
            "name": name, "agent_id": demo_id(engine), "timezone": "UTC",
            "rules": {"windows": ALWAYS, "ring_timeout_s": RING_S, **rules}})
        assert campaign.id is not None
        now = datetime.now(UTC)
        report = store.apply_import(session, campaign.id, parse_csv(("phone\n" + "\n".join(numbers)).encode()),
                                    now=now)
        assert report["imported"] == len(numbers), report
        if start:
            store.change_status(session, campaign.id, "start", now=now)
        return campaign.id


def attempts(engine: Engine, campaign_id: int) -> list[tuple[CampaignAttempt, str]]:
    with session_scope(engine) as session:
        return [(a, e.phone) for a, e in session.exec(
            select(CampaignAttempt, CampaignEntry)
            .join(CampaignEntry, col(CampaignEntry.id) == CampaignAttempt.entry_id)
            .where(CampaignAttempt.campaign_id == campaign_id).order_by(col(CampaignAttempt.id))).all()]


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.2)


def table(test: str, engine: Engine, campaign_id: int) -> None:
    for attempt, phone in attempts(engine, campaign_id):
        OUTCOME_TABLE.append((test, phone, attempt.number, str(attempt.outcome), attempt.sip_cause))


def incoming(result: CallResult, number: str) -> int:
    return sum(1 for e in result.events if e.get("kind") == "incoming" and e.get("number") == number)


async def test_answered_busy_and_unanswered_contacts_are_recorded_and_retried_by_the_rules(
        api: Api, runtime: EvaRuntime, tmp_path: Path) -> None:
    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None
    talker, busy, silent = "+15557010001", "+15557010002", "+15557010003"
    trunk_id, heard = await callee(
        api, "camp-main", "127.0.0.31", refuse={busy: 486, silent: 180}, calls=4, timeout=60,
        record_path=str(tmp_path / "talker.wav"), actions=(Action("hangup", when_quiet=2.0),))
    started = time.monotonic()
    campaign_id = make_campaign(engine, "dialer-main", [talker, busy, silent], trunk_ids=[trunk_id],
                                pacing={"max_concurrent": 3, "max_per_minute": 30},
                                retry={"busy": {"max_attempts": 2, "interval_minutes": 1}})

    def first_busy_recorded() -> bool:
        return any(p == busy and a.outcome == "busy" for a, p in attempts(engine, campaign_id))

    await until(first_busy_recorded, 30, "the busy attempt recorded")
    retry = next(a for a, p in attempts(engine, campaign_id) if p == busy and a.number == 2)
    first = next(a for a, p in attempts(engine, campaign_id) if p == busy and a.number == 1)
    assert first.ended_at is not None and retry.outcome is None
    assert retry.due_at.replace(tzinfo=UTC) - first.ended_at.replace(tzinfo=UTC) >= timedelta(seconds=59)
    with session_scope(engine) as session:  # due now rather than in a minute (see the module's note)
        session.execute(update(CampaignAttempt).where(col(CampaignAttempt.id) == retry.id)
                        .values(due_at=datetime.now(UTC)))

    await until(lambda: len(attempts(engine, campaign_id)) == 4
                and all(a.outcome is not None for a, _ in attempts(engine, campaign_id)),
                RING_S + 40, "every attempt ended")
    elapsed = time.monotonic() - started
    result = await heard
    table("main", engine, campaign_id)
    rows = attempts(engine, campaign_id)
    by = {(p, a.number): a for a, p in rows}
    assert set(by) == {(talker, 1), (busy, 1), (busy, 2), (silent, 1)}, list(by)

    answered = by[(talker, 1)]
    assert answered.outcome == "answered" and answered.call_id is not None
    with session_scope(engine) as session:
        call = session.get(Call, answered.call_id)
        assert call is not None
        assert (call.direction, call.caller, call.agent_id) == ("outbound", talker, demo_id(engine)), call
        assert call.channel_id.startswith(f"eva-camp-{campaign_id}-{answered.id}-")
    assert result.connected and not result.remote_hangup, result  # it answered, heard Eva, and hung up

    for number in (1, 2):
        assert by[(busy, number)].outcome == "busy", by[(busy, number)]
        assert "cause 17" in by[(busy, number)].sip_cause, by[(busy, number)].sip_cause
    assert by[(silent, 1)].outcome == "no_answer" and by[(silent, 1)].call_id is None
    assert (incoming(result, busy), incoming(result, silent)) == (2, 1), result.events
    with session_scope(engine) as session:
        states = {e.phone: (e.state, e.attempts) for e in session.exec(
            select(CampaignEntry).where(CampaignEntry.campaign_id == campaign_id)).all()}
    assert states == {talker: ("reached", 1), busy: ("exhausted", 2), silent: ("exhausted", 1)}, states
    print(f"\nmain campaign: 4 attempts in {elapsed:.1f} s (one retry moved forward)")


async def test_a_do_not_call_phrase_on_a_call_blocks_later_attempts(
        api: Api, runtime: EvaRuntime, say: Callable[[str], Path], tmp_path: Path) -> None:
    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None
    number = "+15557020001"
    trunk_id, heard = await callee(
        api, "camp-dnc", "127.0.0.32", timeout=30, record_path=str(tmp_path / "dnc.wav"),
        # Two opt-out phrases: Whisper once heard "Please stop hauling me."; either one heard right is enough.
        actions=(Action("play", path=str(say("Please stop calling me. Remove me from your list.")),
                        when_quiet=1.5),))
    later = make_campaign(engine, "dialer-dnc-later", [number], start=False, trunk_ids=[trunk_id])
    campaign_id = make_campaign(engine, "dialer-dnc", [number], trunk_ids=[trunk_id])
    await until(lambda: all(a.outcome is not None for a, _ in attempts(engine, campaign_id)), 40,
                "the call ended")
    result = await heard
    (attempt, _), = attempts(engine, campaign_id)
    with session_scope(engine) as session:  # what Eva heard and said, for the failure message
        turns = [(t.kind, t.user_text, t.bot_text) for t in session.exec(
            select(CallTurn).where(CallTurn.call_id == attempt.call_id))]
    assert result.connected and result.remote_hangup, (result, turns)  # Eva hung up, after the goodbye
    assert attempt.outcome == "answered" and attempt.call_id is not None
    with session_scope(engine) as session:
        blocked = session.exec(select(DncEntry).where(DncEntry.phone == number)).all()
        assert [(d.source, d.campaign_id) for d in blocked] == [("phrase", None)], blocked
        said = [t.bot_text for t in session.exec(select(CallTurn).where(CallTurn.call_id == attempt.call_id))]
    assert any(phrase("campaign_call_opted_out", "en") in text for text in said), said

    dialled_before = list(runtime.dialer.dialled)
    with session_scope(engine) as session:
        store.change_status(session, later, "start", now=datetime.now(UTC))
    await until(lambda: all(a.outcome is not None for a, _ in attempts(engine, later)), 20, "the later attempt")
    (skipped, _), = attempts(engine, later)
    assert skipped.outcome == "dnc_skipped", skipped
    assert runtime.dialer.dialled == dialled_before  # nobody was dialled for it
    table("dnc", engine, campaign_id)
    table("dnc-later", engine, later)


async def test_the_opt_out_key_on_a_call_puts_the_number_on_the_do_not_call_list(
        api: Api, runtime: EvaRuntime) -> None:
    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None
    number = "+15557020002"
    # The callee hears the greeting out, then presses 9 (and nothing else: the key alone is the opt-out).
    trunk_id, heard = await callee(api, "camp-dnc-key", "127.0.0.40", timeout=30,
                                   actions=(Action("dtmf", digits="9", when_quiet=1.0),))
    campaign_id = make_campaign(engine, "dialer-dnc-key", [number], trunk_ids=[trunk_id], opt_out_digit="9")
    await until(lambda: all(a.outcome is not None for a, _ in attempts(engine, campaign_id)), 40,
                "the call ended")
    result = await heard
    assert result.connected and result.remote_hangup, result  # Eva said goodbye and hung up
    (attempt, _), = attempts(engine, campaign_id)
    assert attempt.outcome == "answered" and attempt.call_id is not None
    with session_scope(engine) as session:
        blocked = session.exec(select(DncEntry).where(DncEntry.phone == number)).all()
        assert [(d.source, d.campaign_id) for d in blocked] == [("dtmf", None)], blocked
        said = [t.bot_text for t in session.exec(select(CallTurn).where(CallTurn.call_id == attempt.call_id))]
    assert any(phrase("campaign_call_opted_out", "en") in text for text in said), said
    table("dnc-key", engine, campaign_id)


async def test_a_trunk_answering_503_fails_over_to_the_next_trunk(api: Api, runtime: EvaRuntime) -> None:
    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None
    number = "+15557030001"
    down, refused = await callee(api, "camp-down", "127.0.0.33", refuse={number: 503}, calls=1, timeout=30)
    up, answered = await callee(api, "camp-up", "127.0.0.34", timeout=30, actions=(Action("hangup", when_quiet=1.5),))
    campaign_id = make_campaign(engine, "dialer-failover", [number], trunk_ids=[down, up])
    await until(lambda: all(a.outcome is not None for a, _ in attempts(engine, campaign_id)), 40,
                "the call ended")
    first, second = await refused, await answered
    (attempt, _), = attempts(engine, campaign_id)
    assert attempt.outcome == "answered" and attempt.call_id is not None, attempt
    assert incoming(first, number) == 1 and second.connected, (first, second)
    assert [e for c, a, e in runtime.dialer.dialled if a == attempt.id] == ["trunk-camp-down", "trunk-camp-up"]
    table("failover", engine, campaign_id)


async def test_a_restart_mid_campaign_dials_nobody_twice_and_loses_no_attempt(
        api: Api, runtime: EvaRuntime) -> None:
    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None and runtime.voice is not None
    ringing, busy1, busy2 = "+15557040001", "+15557040002", "+15557040003"
    trunk_id, heard = await callee(api, "camp-restart", "127.0.0.35", refuse={ringing: 180, busy1: 486, busy2: 486},
                                   calls=3, timeout=40)
    campaign_id = make_campaign(engine, "dialer-restart", [ringing, busy1, busy2], trunk_ids=[trunk_id],
                                ring_timeout_s=5, pacing={"max_concurrent": 1, "max_per_minute": 30})
    await until(lambda: any(a.started_at is not None for a, _ in attempts(engine, campaign_id)), 20,
                "the first call placed")
    # Restart while the first call rings: the old dialer lets it ring out, the new one goes on with the rest.
    await runtime.dialer.close()
    runtime.dialer = runtime.new_dialer(engine)
    await runtime.dialer.start()
    await until(lambda: all(a.outcome is not None for a, _ in attempts(engine, campaign_id)), 40,
                "every attempt ended")
    result = await heard
    rows = attempts(engine, campaign_id)
    assert sorted((p, a.number, a.outcome) for a, p in rows) == [
        (ringing, 1, "no_answer"), (busy1, 1, "busy"), (busy2, 1, "busy")], rows
    assert [incoming(result, n) for n in (ringing, busy1, busy2)] == [1, 1, 1], result.events
    table("restart", engine, campaign_id)


def greeting_with_beep(say: Callable[[str], Path], folder: Path) -> Path:
    """An answering machine's greeting: the owner's recorded words, then the tone."""
    import numpy as np

    from voicebot.audio import Audio, read_wav, write_wav

    words = read_wav(say("Hi, you have reached Alex. I can't take your call right now. "
                         "Please leave a message after the tone."))
    t = np.arange(int(0.5 * words.rate)) / words.rate
    beep = (0.4 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    gap = np.zeros(int(0.3 * words.rate), dtype=np.int16)
    path = folder / "machine-greeting.wav"
    write_wav(path, Audio(np.concatenate([words.samples.astype(np.int16), gap, beep]), words.rate))
    return path


async def test_an_answering_machine_gets_the_voicemail_message_and_a_person_the_agent(
        api: Api, runtime: EvaRuntime, say: Callable[[str], Path], whisper: WhisperStt, tmp_path: Path) -> None:
    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None
    machine, person = "+15557050001", "+15557050002"
    machine_trunk, machine_heard = await callee(
        api, "camp-machine", "127.0.0.36", timeout=40, record_path=str(tmp_path / "machine.wav"),
        actions=(Action("play", at=0.3, path=str(greeting_with_beep(say, tmp_path))), Action("wait", at=35)))
    person_trunk, person_heard = await callee(
        api, "camp-person", "127.0.0.37", timeout=30,
        actions=(Action("play", at=0.4, path=str(say("Hello?"))), Action("hangup", at=1.5, when_quiet=2.0)))
    voicemail = {"message": "Hello, this is the Sunnyside Bike Shop. Please call us back. Goodbye."}
    machine_campaign = make_campaign(engine, "dialer-machine", [machine], trunk_ids=[machine_trunk],
                                     voicemail=voicemail)
    person_campaign = make_campaign(engine, "dialer-person", [person], trunk_ids=[person_trunk],
                                    voicemail=voicemail)
    await until(lambda: all(a.outcome is not None for c in (machine_campaign, person_campaign)
                            for a, _ in attempts(engine, c)), 60, "both calls ended")
    left, talked = await machine_heard, await person_heard
    table("voicemail", engine, machine_campaign)
    table("amd-person", engine, person_campaign)
    (on_machine, _), = attempts(engine, machine_campaign)
    assert on_machine.outcome == "voicemail" and "MACHINE" in on_machine.sip_cause, on_machine
    assert on_machine.call_id is None  # no conversation: the agent never spoke to a machine
    assert left.connected and left.remote_hangup, left  # Eva hung up after the message
    heard = transcribe_regions(whisper, load(left.record_path)).lower()
    assert heard_phrase(heard, "please call us back", 0.75), heard  # the machine recorded the message
    (with_person, _), = attempts(engine, person_campaign)
    assert with_person.outcome == "answered" and with_person.call_id is not None, with_person
    assert talked.connected and not talked.remote_hangup, talked


async def test_throughput_at_the_pacing_limits(api: Api, runtime: EvaRuntime) -> None:
    """Twenty contacts, all busy (486 at once), at 5 concurrent calls and 600 a minute: what the dialer itself
    sustains through real Asterisk (printed for the report; the assertion is only that each was dialled once)."""
    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None
    numbers = [f"+1555706{i:04d}" for i in range(20)]
    trunk_id, heard = await callee(api, "camp-load", "127.0.0.38", refuse={n: 486 for n in numbers}, calls=20,
                                   timeout=60)
    started = time.monotonic()
    campaign_id = make_campaign(engine, "dialer-load", numbers, trunk_ids=[trunk_id],
                                pacing={"max_concurrent": 5, "max_per_minute": 600},
                                breaker={"enabled": False})
    await until(lambda: all(a.outcome is not None for a, _ in attempts(engine, campaign_id)), 90,
                "every attempt ended")
    elapsed = time.monotonic() - started
    result = await heard
    rows = attempts(engine, campaign_id)
    assert len(rows) == 20 and {a.outcome for a, _ in rows} == {"busy"}, rows
    assert all(incoming(result, n) == 1 for n in numbers), result.events
    first = min(a.started_at for a, _ in rows if a.started_at is not None)
    last = max(a.ended_at for a, _ in rows if a.ended_at is not None)
    span = max(0.001, (last - first).total_seconds())  # first dial to last outcome (not the campaign's discovery)
    print(f"\nthroughput: 20 attempts in {span:.2f} s from first dial to last outcome = {20 / span * 60:.0f} "
          f"attempts/min ({elapsed:.1f} s with start-up; max_concurrent 5, every call busy; over a full minute "
          "max_per_minute caps it)")


async def test_a_campaign_calls_flow_greets_the_contact_with_the_imported_name_and_columns(
        api: Api, runtime: EvaRuntime, whisper: WhisperStt, tmp_path: Path) -> None:
    """The contact list's name and extra columns reach the answered call: its flow says ``{contact_name}`` and
    ``{contact_appointment_day}`` and branches on ``contact_vip``; the callee's recording (Whisper) has them."""
    from models import Flow, FlowRun

    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None
    number = "+15557080001"
    greeting = "Hello Ana, this is about your appointment on Tuesday."
    with session_scope(engine) as session:
        session.add(Flow(name="campaign-vars", agent_id=demo_id(engine), start_step="hello", steps=[
            {"id": "hello", "say": "Hello {contact_name}, this is about your appointment on {contact_appointment_day}.",
             "branches": [{"when": {"var": "contact_vip", "equals": "yes"}, "next": "vip"}], "next": "bye"},
            {"id": "vip", "say": "As a gold member, you may bring a guest.", "next": "bye"},
            {"id": "bye", "say": "Goodbye.", "end": "reminded"}]))
    trunk_id, heard = await callee(api, "camp-vars", "127.0.0.47", timeout=30, record_path=str(tmp_path / "vars.wav"))
    with session_scope(engine) as session:
        campaign = store.create_campaign(session, {
            "name": "dialer-vars", "flow_name": "campaign-vars", "timezone": "UTC",
            "rules": {"windows": ALWAYS, "ring_timeout_s": RING_S, "trunk_ids": [trunk_id]}})
        assert campaign.id is not None
        campaign_id, now = campaign.id, datetime.now(UTC)
        csv = f"phone,name,appointment_day,vip\n{number},Ana,Tuesday,yes\n".encode()
        assert store.apply_import(session, campaign_id, parse_csv(csv), now=now)["imported"] == 1
        store.change_status(session, campaign_id, "start", now=now)
    await until(lambda: all(a.outcome is not None for a, _ in attempts(engine, campaign_id)), 40, "the call ended")
    result = await heard
    table("variables", engine, campaign_id)
    (attempt, _), = attempts(engine, campaign_id)
    with session_scope(engine) as session:
        said = [t.bot_text for t in session.exec(select(CallTurn).where(CallTurn.call_id == attempt.call_id))]
        run = session.exec(select(FlowRun).where(FlowRun.call_id == attempt.call_id)).first()
    assert attempt.outcome == "answered" and attempt.call_id is not None, attempt
    assert any(greeting in text and "gold member" in text for text in said), said
    assert run is not None and run.result == "reminded", run
    assert (run.variables.get("contact_name"), run.variables.get("contact_vip")) == ("Ana", "yes"), run.variables
    assert result.connected and result.remote_hangup, result  # the flow ended: Eva hung up after speaking
    spoken = transcribe_regions(whisper, load(result.record_path)).lower()
    assert heard_phrase(spoken, "hello ana", 0.75), spoken
    assert heard_phrase(spoken, "your appointment on tuesday", 0.75), spoken
    assert heard_phrase(spoken, "gold member", 0.75), spoken
