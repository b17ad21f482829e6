"""Eva as a dialplan step, on real calls (real Asterisk, pjsua2 caller, Eva's ARI app, Whisper listening):

* ``Set(EVA_FLOW=dialplan-menu)`` before ``Stasis()`` (the packaged dialplan's worked example, extensions
  201/202) runs that flow, and when it ends with ``continue`` the call goes back to the dialplan with
  ``EVA_VAR_*`` set: extension 202 reads the collected customer number back, and the caller hears it after Eva
  has let go (outcome ``continued``, never hung up by Eva);
* a caller cannot choose the flow or agent by appending ``,flow=...``/``,agent=...`` to the number, neither
  through the catch-all ``_X.`` (FILTERed) nor through a careless ``did=${EXTEN}`` line;
* a call dropped mid-flow (Eva killed: its ARI connection and call tasks gone without a goodbye) and called
  back from the same verified number on a fresh Eva continues at the same step;
* the worked example passes the designer's dialplan check as a designer would submit it, applied by Asterisk.

The flow runs in Eva's own FlowResponder (voicebot/flows/voice.py); the agent inside it is the scripted one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from models import Agent, Call, Flow, FlowRun, Route
from models.db import session_scope
from tests.conftest import Caller
from tests.voice.conftest import load, transcribe, transcribe_regions
from voicebot.agent import store
from voicebot.ari import AriClient
from voicebot.ari.handback import clean_value, dialplan_variables
from voicebot.asterisk.process import Asterisk
from voicebot.asterisk.render import DIALPLAN_DIR
from voicebot.audio import voiced_regions
from voicebot.flows.spec import check_flow, parse_flow
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async
from voicebot.stt.whisper import WhisperStt
from voicebot.voiceapp import VoiceApp

ON_THE_SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")

VERIFIED_NUMBER = "+15550007777"
MENU_GREETING = "Menu desk."


EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "voicebot" / "flows" / "examples"


def packaged_example_flow() -> dict[str, Any]:
    """The flow documented in dialplan/inbound.conf's comments (so the documentation cannot rot)."""
    text = (DIALPLAN_DIR / "inbound.conf").read_text(encoding="utf-8")
    found = re.search(r"POST it to /api/v1/flows.*?\n((?:;   .*\n)+)", text)
    assert found is not None, "the worked example's flow is missing from dialplan/inbound.conf"
    data: dict[str, Any] = json.loads("".join(line[4:] for line in found.group(1).splitlines(True)))
    # Setup ships the same flow (voicebot/flows/examples), so 201/202 work on a fresh install.
    shipped = json.loads((EXAMPLES_DIR / f"{data['name']}.json").read_text(encoding="utf-8"))
    assert {k: shipped[k] for k in data} == data, "dialplan/inbound.conf and the shipped example flow differ"
    return data


def _last_call_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        return int(session.exec(select(Call.id).order_by(col(Call.id).desc())).first() or 0)


def _calls_after(engine: Engine, after: int) -> list[Call]:
    with session_scope(engine) as session:
        return list(session.exec(select(Call).where(col(Call.id) > after).order_by(col(Call.id))).all())


async def _settled(voice: VoiceApp) -> None:
    for _ in range(150):
        if not voice.calls:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"calls still live: {voice.calls}")


def _digits(heard: str) -> str:
    words = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "for": "4", "five": "5",
             "six": "6", "seven": "7", "eight": "8", "nine": "9"}
    return "".join(words.get(w, w) for w in re.findall(r"[a-z]+|\d", heard.lower()) if w.isdigit() or w in words)


def _heard_after(whisper: WhisperStt, path: str, t: float) -> str:
    """What the caller heard in the stretches of speech that began ``t`` seconds or more into the call."""
    audio = load(path)
    return " ".join(transcribe(whisper, audio, max(0.0, start - 0.2), end + 0.2)
                    for start, end in voiced_regions(audio, min_gap_s=0.6) if start >= t)


@pytest.fixture
def world(runtime: EvaRuntime) -> Iterator[dict[str, int]]:
    """The worked example's flow (its own agent answers inside it), a secret flow and agent a caller must not
    reach, and route 971 (the careless dialplan's number) to the demo agent."""
    assert runtime.engine is not None
    example = packaged_example_flow()
    check_flow(parse_flow(example["start_step"], example["steps"]))
    with session_scope(runtime.engine) as session:
        def agent(name: str, greeting: str) -> int:
            found = session.exec(select(Agent).where(Agent.name == name)).first()
            return int((found or store.create_agent(session, {"name": name, "greeting": greeting})).id or 0)

        menu_agent, secret_agent = agent("menu-desk", MENU_GREETING), agent("secret-agent", "Secret desk.")
        for name, agent_id in ((example["name"], menu_agent), ("secret-flow", secret_agent)):
            row = session.exec(select(Flow).where(Flow.name == name)).first() or Flow(name=name, start_step="")
            row.start_step, row.steps, row.agent_id, row.enabled = (example["start_step"], example["steps"],
                                                                     agent_id, True)
            session.add(row)
        if session.exec(select(Route).where(Route.did == "971")).first() is None:
            store.create_route(session, {"did": "971", "agent_id": store.get_agent_by_name(session, "demo").id})
        demo = int(store.get_agent_by_name(session, "demo").id or 0)
    yield {"menu": menu_agent, "secret": secret_agent, "demo": demo}


@pytest.fixture
def careless_dialplan(asterisk: Asterisk) -> Iterator[None]:
    """A designer's slip, written straight to Asterisk (no validator): ``${EXTEN}`` unfiltered in Stasis."""
    path = asterisk.settings.asterisk_dir / "etc" / "dialplan" / "zz-careless-flow-test.conf"
    path.write_text("[eva-inbound]\nexten => _97X.,1,Stasis(${EVA_APP},did=${EXTEN})\n same => n,Hangup()\n")
    path.chmod(0o644)
    asterisk.cli("dialplan reload")
    try:
        assert "_97X." in asterisk.cli("dialplan show eva-inbound")
        yield
    finally:
        path.unlink()
        asterisk.cli("dialplan reload")


@pytest_asyncio.fixture(loop_scope="session")
async def verified_line(runtime: EvaRuntime, asterisk: Asterisk) -> AsyncIterator[str]:
    """An admin's trunk at 127.0.0.9 marked as delivering verified caller IDs; yields its address."""
    from admin_api.ami import AmiClient
    from admin_api.asterisk_link import AsteriskLink
    from admin_api.trunks import TrunkService

    assert runtime.engine is not None
    ami = AmiClient(runtime.settings)
    trunks = TrunkService(runtime.engine, AsteriskLink(runtime.settings, ami))
    trunk = await trunks.create({"name": "flowresume", "host": "127.0.0.9", "verified_caller_id": True})
    try:
        yield "127.0.0.9"
    finally:
        await trunks.delete(int(trunk.id or 0))
        await ami.close()


# ---------------------------------------------------------------------------------------------- pure
def test_handed_back_values_cannot_break_the_dialplan() -> None:
    assert clean_value('12",34 ]?800,1:evil${X}') == "1234 8001evilX"
    assert clean_value("Zoë  O'Brien\n\x07") == "Zoë OBrien"
    assert clean_value("+1 (555) 010-9999") == "+1 555 010-9999"
    assert clean_value("ann@example.com") == "ann@example.com"
    assert len(clean_value("9" * 10_000)) == 128
    variables = dialplan_variables("continue;Hangup", {"choice": "hours", "bad name": "x", "A1": 3,
                                                       "x" * 65: "too long a name"})
    assert variables == {"EVA_RESULT": "continueHangup", "EVA_VAR_choice": "hours", "EVA_VAR_A1": "3"}


def test_designers_may_pick_a_flow_only_by_a_literal_name() -> None:
    from admin_api.dialplans import jump_targets, set_problem

    assert set_problem("EVA_FLOW=dialplan-menu") is None
    assert set_problem("EVA_AGENT=front-desk") is None
    for refused in ("EVA_FLOW=${EXTEN}", "EVA_AGENT=${CALLERID(name)}", "EVA_FLOW=a,b", "__EVA_FLOW=x",
                    "EVA_RESULT=continue", "EVA_VAR_choice=sales", "EVA_APP=other",
                    "EVA_APPS=other", "__EVA_APPS=eva"):  # which worker takes the call is Eva's own choice
        assert set_problem(refused), refused
    # The one computed condition a designer may write is on what Eva handed back ...
    assert jump_targets("gotoif", '$["${EVA_VAR_choice}" = "hours"]?hours,s,1') == ["hours", "hours"]
    # ... never on the caller's own text, and never a computed target.
    assert jump_targets("gotoif", '$["${EXTEN}" = "hours"]?hours,s,1') is None
    assert jump_targets("gotoif", '$["${EVA_VAR_choice}" = "x"]?${EVA_VAR_choice},1') is None


# ---------------------------------------------------------------------------------------------- real calls
def _runs(engine: Engine, call_id: int | None) -> list[FlowRun]:
    with session_scope(engine) as session:
        return list(session.exec(select(FlowRun).where(FlowRun.call_id == call_id).order_by(col(FlowRun.id))).all())


@ON_THE_SESSION_LOOP
async def test_the_flow_continues_in_the_dialplan_which_reads_the_collected_number_back(
        runtime: EvaRuntime, caller: Caller, whisper: WhisperStt, world: dict[str, int]) -> None:
    assert runtime.engine is not None and runtime.voice is not None
    before = _last_call_id(runtime.engine)
    # The flow asks its menu question at once; 1 = hours; then it asks for the customer number.
    result = await place_call_async(caller.script(
        "202", Action("dtmf", at=7.0, digits="1"), Action("dtmf", at=16.0, digits="4711#"), timeout=30))
    assert result.connected, result
    await _settled(runtime.voice)
    (call,) = _calls_after(runtime.engine, before)
    heard = transcribe_regions(whisper, load(result.record_path)).lower()
    assert call.agent_id == world["menu"]  # the flow's own agent answers inside it, not the DID's route
    (run,) = _runs(runtime.engine, call.id)
    assert run.flow_name == "dialplan-menu", run  # Set(EVA_FLOW=dialplan-menu) chose it
    assert (run.status, run.result, run.variables.get("choice"), run.variables.get("code")) == (
        "ended", "continue", "hours", "4711"), (run, heard)
    # Eva let go: the dialplan's SayDigits(${EVA_VAR_code}) spoke after the keys, and only then the line dropped.
    assert "4711" in _digits(_heard_after(whisper, result.record_path, 16.0)), heard
    assert "customer" in heard, heard  # and before that, the caller heard the flow's question
    assert result.remote_hangup, result
    assert call.outcome == "continued", call


@ON_THE_SESSION_LOOP
@pytest.mark.usefixtures("careless_dialplan")
@pytest.mark.parametrize("number", ["201,flow=secret-flow", "100,agent=secret-agent", "100,flow=secret-flow",
                                    "971,flow=secret-flow", "971,agent=secret-agent"])
async def test_a_caller_cannot_choose_the_flow_or_agent_through_stasis_arguments(
        runtime: EvaRuntime, caller: Caller, world: dict[str, int], number: str) -> None:
    """Through the catch-all ``_X.`` (it FILTERs ``${EXTEN}``) and through a careless ``did=${EXTEN}`` line
    (971: the arguments really arrive as ``did=971,flow=secret-flow``)."""
    assert runtime.engine is not None and runtime.voice is not None
    before = _last_call_id(runtime.engine)
    result = await place_call_async(caller.script(number, Action("dtmf", at=2.0, digits="1#"), timeout=6,
                                                  record=False))
    assert result.connected, result
    await _settled(runtime.voice)
    (call,) = _calls_after(runtime.engine, before)
    assert call.agent_id != world["secret"], call
    assert not _runs(runtime.engine, call.id), _runs(runtime.engine, call.id)  # no flow ran at all
    if number.startswith(("100", "971")):  # both numbers route to the demo agent, which answered
        assert call.agent_id == world["demo"], call


@ON_THE_SESSION_LOOP
async def test_a_call_dropped_mid_flow_resumes_at_the_same_step_on_a_fresh_eva(
        runtime: EvaRuntime, caller: Caller, world: dict[str, int], verified_line: str,
        whisper: WhisperStt) -> None:
    assert runtime.engine is not None and runtime.voice is not None
    engine, old = runtime.engine, runtime.voice
    with session_scope(engine) as session:
        contact = store.find_contact(session, phone=VERIFIED_NUMBER, verified=True)
        if contact is not None:  # a previous run of this test: its runs are not this one's
            for stale in session.exec(select(FlowRun).where(FlowRun.contact_id == contact.id)).all():
                stale.status = "ended"
                session.add(stale)
    before = _last_call_id(engine)

    # 1. The caller chooses "hours" (1); the flow asks for the customer number; Eva dies before the answer.
    first_call = asyncio.ensure_future(place_call_async(caller.script(
        "202", Action("dtmf", at=6.0, digits="1"), timeout=18, record=False, from_user=VERIFIED_NUMBER,
        bind_ip=verified_line)))
    run: FlowRun | None = None
    for _ in range(300):
        with session_scope(engine) as session:
            run = session.exec(select(FlowRun).join(Call, col(Call.id) == col(FlowRun.call_id))
                               .where(col(Call.id) > before)).first()
        if run is not None and run.step == "code":
            break
        await asyncio.sleep(0.1)
    assert run is not None and run.step == "code", run
    assert run.contact_id is not None, run  # the verified caller is a contact
    await asyncio.sleep(2.0)  # the question is being spoken
    # Killed: no hang-up, no goodbye; the ARI connection and the call's task simply vanish.
    leftovers = [(live.bridge_id, live.media_channel_id) for live in old.calls.values()]
    tasks = [live.task for live in old.calls.values() if live.task is not None]
    await old.ari.close()
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    first_result = await first_call
    assert first_result.connected, first_result

    # 2. A fresh Eva (new ARI client, new flow runner, nothing in memory) and the caller calls back.
    ari = AriClient(runtime.settings.ari_url, runtime.settings.ari_user, runtime.settings.ari_password,
                    runtime.settings.ari_app)
    fresh = VoiceApp(runtime.settings, engine, ari, old.stt, old.tts, old.responder, old.resolve_agent)
    await fresh.start()
    runtime.voice = fresh
    if runtime.dialer is not None:  # the dialer dials through the voice app's ARI: the old one is closed now
        await runtime.dialer.close()
        runtime.dialer = runtime.new_dialer(engine)
        await runtime.dialer.start()
    try:
        before_second = _last_call_id(engine)
        # "Welcome back. Please type your customer number ..." -- then the keys answer that step.
        result = await place_call_async(caller.script(
            "202", Action("dtmf", at=7.0, digits="4711#"), timeout=20, from_user=VERIFIED_NUMBER,
            bind_ip=verified_line))
        assert result.connected, result
        await _settled(fresh)
        (call,) = _calls_after(engine, before_second)
        heard = transcribe_regions(whisper, load(result.record_path)).lower()
        with session_scope(engine) as session:
            resumed = session.get(FlowRun, run.id)
            assert resumed is not None
            newer = session.exec(select(FlowRun).where(col(FlowRun.id) > run.id)).all()
        assert not newer, newer  # no new run was started: the first call's run was taken over
        assert "welcome back" in heard and "customer" in heard, heard
        # The keys answered the step the first call stopped at: the flow went on to its end and handed back.
        assert (resumed.call_id, resumed.status, resumed.result) == (call.id, "ended", "continue"), resumed
        assert (resumed.variables["choice"], resumed.variables["code"]) == ("hours", "4711"), resumed.variables
        assert "4711" in _digits(_heard_after(whisper, result.record_path, 7.0)), heard
        assert call.outcome == "continued", call
    finally:
        for bridge_id, media_id in leftovers:  # what the killed Eva left in Asterisk
            with contextlib.suppress(Exception):
                await fresh.ari.destroy_bridge(bridge_id)
            with contextlib.suppress(Exception):
                await fresh.ari.hangup(media_id)


@ON_THE_SESSION_LOOP
async def test_the_worked_example_passes_the_designer_check_and_asterisk_loads_it(runtime: EvaRuntime) -> None:
    """A designer copies extensions 201/202 into a file of their own through the dialplan API."""
    from admin_api.ami import AmiClient
    from admin_api.asterisk_link import AsteriskLink
    from admin_api.dialplans import DialplanService

    packaged = (DIALPLAN_DIR / "inbound.conf").read_text(encoding="utf-8")
    start, end = packaged.index("exten => 201,"), packaged.index("; 601 hands")
    block = packaged[start:end].replace("exten => 201,", "exten => 4201,").replace("exten => 202,", "exten => 4202,")
    ami = AmiClient(runtime.settings)
    service = DialplanService(AsteriskLink(runtime.settings, ami))
    try:
        saved = await service.put("flowstep-example", f"[designer-flowstep]\n{block}")
        assert saved["applied"] is True, saved
        shown = await ami.command("dialplan show designer-flowstep")
        assert "Set(EVA_FLOW=dialplan-menu)" in shown and '${EVA_VAR_choice}' in shown, shown
    finally:
        with contextlib.suppress(Exception):
            await service.delete("flowstep-example")
        await ami.close()
