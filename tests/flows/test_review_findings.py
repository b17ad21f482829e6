"""Adversarial review of conversation flows (issue 12): one failing test per finding, named ``test_R<n>_...``.

Each test states the behaviour a hostile caller, contact, careless designer or crash relies on; they fail on the
code as reviewed and are meant to pass once the finding is fixed (the review report gives the fix for each).
Engine-level where the fault is in the pure state machine; runner-level (a real SQLite database, real aiohttp
servers on loopback for webhooks) where it is in how the runner carries the engine's requests out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import select

from models import Flow, FlowRun, utcnow
from models.db import make_engine, session_scope, upgrade
from voicebot.ari.handback import dialplan_variables
from voicebot.errors import InvalidInput
from voicebot.flows import values
from voicebot.flows.engine import Act, AgentTurn, FlowEngine, Listen
from voicebot.flows.runner import WEBHOOK_MAX_VARIABLES, FlowConflict, FlowRunner
from voicebot.flows.spec import check_flow, parse_flow

TODAY = date(2026, 12, 1)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'review.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def store_flow(engine: Engine, name: str, start: str, steps: list[dict[str, Any]]) -> None:
    """Store a flow the way the admin API does: checked first."""
    check_flow(parse_flow(start, steps))
    with session_scope(engine) as session:
        row = session.exec(select(Flow).where(Flow.name == name)).first() or Flow(name=name, start_step=start)
        row.start_step, row.steps, row.enabled, row.updated_at = start, steps, True, utcnow()
        session.add(row)


class Hook:
    """A real HTTP server on loopback answering a flow's webhook with ``handler``; records the bodies."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.url = ""
        self.answer: Any = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        result: web.StreamResponse = await self.answer(request)
        return result


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/hook", h.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    h.url = f"http://127.0.0.1:{port}/hook"
    yield h
    await runner.cleanup()


def webhook_flow(url: str) -> list[dict[str, Any]]:
    return [
        {"id": "phone", "say": "Your phone number?", "collect": {"var": "phone", "type": "phone"}, "next": "hook"},
        {"id": "hook", "action": {"type": "webhook", "url": url}, "fallback": "sorry", "next": "done"},
        {"id": "done", "say": "Thanks.", "end": "continue"},
        {"id": "sorry", "say": "That did not work.", "end": "failed"},
    ]


# ---------------------------------------------------------------------------------------------- webhooks
async def test_R1_webhook_answer_cannot_overwrite_builtin_or_collected_variables(db: Engine, hook: Hook) -> None:
    """A webhook's JSON answer (a third-party CRM, or one that echoes caller data back) may add variables but must
    not replace ``caller`` (the default recipient of send_message, and EVA_VAR_caller) or a value the caller
    gave and the flow validated (``phone`` -> EVA_VAR_phone)."""
    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"caller": "+19990000000", "phone": "0000000", "channel": "email",
                                  "booking_id": "B42"})

    hook.answer = answer
    store_flow(db, "hooked", "phone", webhook_flow(hook.url))
    runner = FlowRunner(db)
    reply = await runner.start("hooked", channel="voice", variables={"caller": "+15550001"})
    reply = await runner.answer(reply.run_id, "five five five one two three four five")
    assert reply.ended and reply.result == "continue"
    assert reply.variables["booking_id"] == "B42"  # new keys are fine
    assert reply.variables["caller"] == "+15550001"
    assert reply.variables["phone"] == "55512345"
    assert reply.variables["channel"] == "voice"


async def test_R2_deeply_nested_webhook_json_does_not_crash_the_turn(db: Engine, hook: Hook) -> None:
    """A 4 KB answer ``{"a": [[[[...]]]]}`` raises RecursionError in json.loads, which ``suppress(ValueError)``
    lets through: the caller's turn dies, the run is not stored, and every retry of the answer dies again."""
    nested = '{"a": ' + "[" * 2000 + "]" * 2000 + "}"

    async def answer(_: web.Request) -> web.Response:
        return web.Response(text=nested, content_type="application/json")

    hook.answer = answer
    store_flow(db, "nested", "phone", webhook_flow(hook.url))
    runner = FlowRunner(db)
    reply = await runner.start("nested", channel="voice", variables={"caller": "+15550001"})
    reply = await runner.answer(reply.run_id, "5551234567")  # raises RecursionError today
    assert reply.ended  # the answer is ignored (or the action fails to its fallback): either way the run moves


async def test_R3_webhook_answer_sent_in_two_pieces_is_read_whole(db: Engine, hook: Hook) -> None:
    """``response.content.read(n)`` returns what has arrived so far, not n bytes: a JSON answer that comes in two
    TCP pieces is cut, fails to parse, and its variables are silently lost while the action counts as done."""
    padding = "x" * 3000
    body = json.dumps({"padding": padding, "booking_id": "B42"}).encode()

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:1000])
        await asyncio.sleep(0.2)  # a slow backend (not an assertion on time: it only splits the answer)
        await response.write(body[1000:])
        await response.write_eof()
        return response

    hook.answer = answer
    store_flow(db, "pieces", "phone", webhook_flow(hook.url))
    runner = FlowRunner(db)
    reply = await runner.start("pieces", channel="voice", variables={"caller": "+15550001"})
    reply = await runner.answer(reply.run_id, "5551234567")
    assert reply.variables.get("booking_id") == "B42"


async def test_R4_webhook_body_names_the_flow(db: Engine, hook: Hook) -> None:
    """spec.Action.url documents the POSTed JSON as ``{flow, step, channel, variables}``; ``flow`` is missing, so
    one receiver cannot tell two flows' calls apart."""
    async def answer(_: web.Request) -> web.Response:
        return web.json_response({})

    hook.answer = answer
    store_flow(db, "named", "phone", webhook_flow(hook.url))
    runner = FlowRunner(db)
    reply = await runner.start("named", channel="voice", variables={"caller": "+15550001"})
    await runner.answer(reply.run_id, "5551234567")
    assert hook.bodies and hook.bodies[0].get("flow") == "named"


async def test_R5_handback_keeps_collected_variables_when_a_webhook_added_many(db: Engine, hook: Hook) -> None:
    """dialplan_variables keeps the first MAX_VARIABLES (50): a CRM webhook answering 60 fields before the menu
    choice is collected must not push ``choice`` out, or ``GotoIf($["${EVA_VAR_choice}" = "sales"]...)`` never
    matches.  The flow's own variables come first; a webhook adds at most WEBHOOK_MAX_VARIABLES."""
    async def answer(_: web.Request) -> web.Response:
        return web.json_response({f"crm_field_{i}": "x" for i in range(60)})

    hook.answer = answer
    store_flow(db, "crm", "lookup", [
        {"id": "lookup", "action": {"type": "webhook", "url": hook.url}, "fallback": "menu", "next": "menu"},
        {"id": "menu", "say": "Sales or support?", "collect": {"var": "choice", "type": "choice",
                                                               "choices": {"sales": ["1"], "support": ["2"]}},
         "next": "done"},
        {"id": "done", "end": "continue"}])
    runner = FlowRunner(db)
    reply = await runner.start("crm", channel="voice", variables={"caller": "+15550001", "did": "201"})
    reply = await runner.answer(reply.run_id, "", dtmf="1")
    assert reply.ended and reply.result == "continue"
    assert sum(k.startswith("crm_field_") for k in reply.variables) <= WEBHOOK_MAX_VARIABLES
    assert dialplan_variables("continue", reply.variables).get("EVA_VAR_choice") == "sales"


# ---------------------------------------------------------------------------------------------- the runner
async def test_R6_flow_edited_mid_run_so_the_step_no_longer_collects(db: Engine) -> None:
    """The designer edits a live flow: step ``a`` keeps its id but becomes a plain message.  _load_run only checks
    that the step still exists, and engine.answer/no_input ``assert step.collect is not None``: every later input
    of that run raises AssertionError (a call's turn says 'trouble' forever; a WhatsApp message is never
    answered)."""
    store_flow(db, "edited", "a", [{"id": "a", "say": "Your name?", "collect": {"var": "name"}, "next": "b"},
                                   {"id": "b", "say": "Bye.", "end": "done"}])
    runner = FlowRunner(db)
    reply = await runner.start("edited", channel="whatsapp")
    store_flow(db, "edited", "a", [{"id": "a", "say": "We are closed today.", "next": "b"},
                                   {"id": "b", "say": "Bye.", "end": "done"}])
    reply = await runner.answer(reply.run_id, "Maria")  # AssertionError today
    assert reply.ended


async def test_R7_a_resumed_run_that_was_waiting_for_the_agent_answers_the_caller(db: Engine) -> None:
    """Eva is killed while the agent answers an ``ask_agent`` step (the LLM takes seconds: the likeliest moment of
    a crash).  The stored run waits for ``ask_agent``; the caller calls back (verified caller ID) and is resumed:
    resume() neither repeats the agent request nor listens, and answer() ignores every input while the run is
    not waiting for input -- the caller hears the fallback message on every turn, forever.  (Text channels
    recover in ConversationFlows._continue; calls have no such path.)"""
    store_flow(db, "hours", "menu", [
        {"id": "menu", "say": "Press 1 for opening hours.",
         "collect": {"var": "choice", "type": "choice", "choices": {"hours": ["1"]}}, "next": "answer"},
        {"id": "answer", "ask_agent": "What are the opening hours?", "next": "more"},
        {"id": "more", "say": "Anything else?", "collect": {"var": "more", "type": "yes_no"}, "next": "bye"},
        {"id": "bye", "say": "Bye.", "end": "done"}])
    runner = FlowRunner(db)
    reply = await runner.start("hours", channel="voice", variables={"caller": "+15550001"})
    reply = await runner.answer(reply.run_id, "", dtmf="1")
    assert reply.agent_request is not None  # ... and here the worker dies, agent_done is never called
    resumed = await runner.resume(reply.run_id, call_id=None)
    after = await runner.answer(resumed.run_id, "hello?")
    progressed = [resumed.agent_request, resumed.listen, after.agent_request, after.says, after.ended]
    assert any(progressed), "the resumed run ignores the caller"


async def test_R8_a_chain_of_actions_the_checker_accepts_runs_to_its_end(db: Engine) -> None:
    """check_flow accepts any loop-free chain of up to 200 steps, but the runner settles at most MAX_INTERNAL (32)
    actions per input and then ends the run as ``failed``: a flow of 40 ``set`` steps is accepted and can never
    finish."""
    steps: list[dict[str, Any]] = [{"id": f"s{i}", "action": {"type": "set", "values": {f"v{i}": "1"}},
                                    "next": f"s{i + 1}"} for i in range(40)]
    steps.append({"id": "s40", "say": "Done.", "end": "done"})
    try:
        store_flow(db, "long", "s0", steps)
    except InvalidInput:
        return  # refused with a reason: fine
    reply = await FlowRunner(db).start("long", channel="whatsapp")
    assert reply.result == "done"


async def test_R9_designer_patterns_on_caller_data_run_off_the_event_loop(db: Engine,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """runner.answer runs the engine in a thread, but start(), no_input(), action_done() and agent_done() run it on
    the event loop, and their routing evaluates branch ``matches`` patterns on caller data (here the caller ID) --
    up to PATTERN_TIMEOUT_S (50 ms) per branch, 50 branches per step, MAX_HOPS steps: seconds of a frozen loop for
    every call on the worker."""
    on_loop: list[bool] = []
    real = values.designer_match

    def spy(pattern: str, text: str) -> bool:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return real(pattern, text)

    monkeypatch.setattr(values, "designer_match", spy)
    store_flow(db, "routed", "hello", [
        {"id": "hello", "say": "Hello.", "branches": [{"when": {"var": "caller", "matches": r"\+1.*"}, "next": "us"}],
         "next": "other"},
        {"id": "us", "say": "Hi from the US.", "end": "done"},
        {"id": "other", "say": "Hi.", "end": "done"}])
    await FlowRunner(db).start("routed", channel="voice", variables={"caller": "+15550001"})
    assert on_loop and not any(on_loop), "a designer pattern ran on the event loop"


# ---------------------------------------------------------------------------------------------- the engine / checker
def test_R10_a_chain_of_messages_the_checker_accepts_is_not_ended_as_failed() -> None:
    """check_flow refuses loops that never wait, not long chains; the engine ends a run as ``failed`` after MAX_HOPS
    (64) steps without waiting.  A 70-step scripted message chain is accepted and always fails."""
    steps: list[dict[str, Any]] = [{"id": f"s{i}", "say": f"Part {i}.", "next": f"s{i + 1}"} for i in range(70)]
    steps.append({"id": "s70", "say": "The end.", "end": "done"})
    spec = parse_flow("s0", steps)
    try:
        check_flow(spec)
    except InvalidInput:
        return  # refused with a reason: fine
    assert FlowEngine(spec).start({}).state.result == "done"


def agent_flow(**agent: Any) -> FlowEngine:
    spec = parse_flow("chat", [{"id": "chat", "say": "Ask me anything.", "agent": agent, "next": "bye"},
                               {"id": "bye", "say": "Back to the menu.", "end": "done"}])
    check_flow(spec)
    return FlowEngine(spec)


def test_R11_after_an_agent_turn_the_handover_listens_again() -> None:
    """After an agent handover turn (below max_turns) agent_done outputs nothing: the reply has no ``listen``, so on
    a call the session drops the step's key settings and starts no no-input timer -- the engine's documented way
    out of a handover for a silent caller (no_input -> next) never fires."""
    engine = agent_flow()
    adv = engine.answer(engine.start({}).state, "what do you charge for a check-up?", today=TODAY)
    assert isinstance(adv.outputs[-1], AgentTurn)
    done = engine.agent_done(adv.state)
    assert any(isinstance(o, Listen) for o in done.outputs)


def test_R12_an_exit_phrase_of_punctuation_does_not_end_every_handover_turn() -> None:
    """An exit phrase is checked with ``norm in said``; a phrase made of punctuation ("?", "...") normalises to ''
    and '' is in every string: the checker accepts it and the first question leaves the agent."""
    try:
        engine = agent_flow(exit_phrases=["?"])
    except InvalidInput:
        return  # refused: fine
    adv = engine.answer(engine.start({}).state, "what do you charge for a check-up", today=TODAY)
    assert isinstance(adv.outputs[-1], AgentTurn)


def test_R13_an_exit_phrase_matches_whole_words_only() -> None:
    """``"go back" in "i want to go backpacking"`` is a substring hit: the caller is thrown out of the handover."""
    engine = agent_flow(exit_phrases=["go back"])
    adv = engine.answer(engine.start({}).state, "I want to go backpacking next month, what vaccines?", today=TODAY)
    assert isinstance(adv.outputs[-1], AgentTurn)


def number_engine() -> FlowEngine:
    spec = parse_flow("n", [{"id": "n", "say": "How many?", "collect": {"var": "n", "type": "number"},
                             "next": "end"}, {"id": "end", "end": "done"}])
    return FlowEngine(spec)


def test_R14_a_typed_thousands_separator_is_not_a_decimal_point() -> None:
    """spoken_number reads "1,000" (typed on WhatsApp/e-mail) as 1.0: a caller ordering 1,000 is stored as 1."""
    engine = number_engine()
    adv = engine.answer(engine.start({}).state, "1,000", today=TODAY)
    assert adv.state.variables.get("n") in (None, "1000")


def test_R15_a_huge_number_is_not_stored_as_inf() -> None:
    """400 typed digits parse to float('inf') and are stored as the value "inf" (no min/max given)."""
    engine = number_engine()
    adv = engine.answer(engine.start({}).state, "9" * 400, today=TODAY)
    assert adv.state.variables.get("n") != "inf"


def test_R16_send_message_is_bounded_per_run() -> None:
    """A WhatsApp contact can make Eva mail any address it types, once per message, without end: collect an
    e-mail -> send_message to ``{email}`` -> "another?" -> back.  Nothing caps the sends of a run (or per contact),
    so Eva's sender reputation relays a hostile contact's spam.  Suggested cap: a few per run."""
    spec = parse_flow("email", [
        {"id": "email", "say": "Your e-mail?", "collect": {"var": "email", "type": "email"}, "next": "send"},
        {"id": "send", "action": {"type": "send_message", "channel": "email", "to": "{email}",
                                  "text": "Your brochure."}, "fallback": "more", "next": "more"},
        {"id": "more", "say": "Another one?", "collect": {"var": "more", "type": "yes_no"},
         "branches": [{"when": {"var": "more", "equals": "yes"}, "next": "email"}], "next": "bye"},
        {"id": "bye", "say": "Bye.", "end": "done"}])
    check_flow(spec)
    engine = FlowEngine(spec)
    adv = engine.start({"caller": "+15550001"})
    sends = 0
    for i in range(20):
        adv = engine.answer(adv.state, f"victim{i}@example.com", today=TODAY)
        for output in adv.outputs:
            if isinstance(output, Act) and output.action.type == "send_message":
                sends += 1
                adv = engine.action_done(adv.state, True)
        if adv.state.ended or adv.state.step != "more":
            break
        adv = engine.answer(adv.state, "yes", today=TODAY)
        if adv.state.ended:
            break
    assert sends <= 5


def test_R17_a_flow_cannot_collect_or_set_a_builtin_variable() -> None:
    """``caller`` is the default recipient of send_message and the caller's identity handed to webhooks and to the
    dialplan (EVA_VAR_caller); a careless designer who collects the caller's typed number into ``caller`` (or sets
    ``channel``/``did``, or collects into ``last_input``, which every later answer overwrites) gets no warning.
    The checker should refuse builtin names (BUILTIN_VARS) as collect/set/store_as targets."""
    spec = parse_flow("ask", [
        {"id": "ask", "say": "Which number should we text?", "collect": {"var": "caller", "type": "phone"},
         "next": "send"},
        {"id": "send", "action": {"type": "send_message", "channel": "whatsapp", "text": "Your code is 1234."}}])
    with pytest.raises(InvalidInput):
        check_flow(spec)


async def test_R18_a_barge_in_during_a_webhook_does_not_run_it_twice(db: Engine, hook: Hook) -> None:
    """On a call any speech or key while a turn is unfinished cancels it (CallSession._barge_in), and a caller who
    spoke before Eva said anything has those words carried into the next turn.  A turn cancelled while the flow
    waits on its webhook has already POSTed, but the run is stored only at the end of _settle: the state is lost,
    the caller's (carried) answer re-answers the same step, and the webhook -- "create the booking" -- runs again.
    A fix stores the run even when the turn is cancelled (shield the settle) or records the action as started
    before it runs, so the next input does not repeat it."""
    received, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def answer(_: web.Request) -> web.Response:
        received.set()
        await release.wait()
        finished.set()
        return web.json_response({"booking_id": "B42"})

    hook.answer = answer
    store_flow(db, "booking", "phone", webhook_flow(hook.url))
    runner = FlowRunner(db)
    start = await runner.start("booking", channel="voice", variables={"caller": "+15550001"})

    def version() -> int:
        with session_scope(db) as session:
            run = session.get(FlowRun, start.run_id)
            assert run is not None
            return run.version

    before = await asyncio.to_thread(version)
    turn = asyncio.create_task(runner.answer(start.run_id, "5551234567"))
    await received.wait()
    turn.cancel()  # the caller says "hello?" while Eva waits on the webhook
    with pytest.raises(asyncio.CancelledError):
        await turn
    release.set()
    await finished.wait()
    for _ in range(100):  # let a shielded settle store the run, if the fix is one (not a timing assertion)
        if await asyncio.to_thread(version) != before:
            break
        await asyncio.sleep(0.02)
    received.clear()
    with contextlib.suppress(FlowConflict):
        await runner.answer(start.run_id, "5551234567 hello?")  # the next turn: the carried words
    assert len(hook.bodies) == 1, "the webhook ran twice for one answer"


def test_R19_a_reprompt_fills_its_variables() -> None:
    """``no_match``/``no_input`` are said as written (_retry does not fill them) and the checker does not look at
    them: "Sorry {name}, which day?" is accepted and spoken with a literal "{name}"."""
    spec = parse_flow("name", [
        {"id": "name", "say": "Your name?", "collect": {"var": "name"}, "next": "date"},
        {"id": "date", "say": "Which day, {name}?", "collect": {"var": "date", "type": "date"},
         "no_match": "Sorry {name}, I did not get the day.", "next": "end"},
        {"id": "end", "end": "done"}])
    check_flow(spec)
    engine = FlowEngine(spec)
    adv = engine.answer(engine.start({}).state, "Maria", today=TODAY)
    adv = engine.answer(adv.state, "purple", today=TODAY)
    assert adv.says() and "{name}" not in adv.says()[0] and "Maria" in adv.says()[0]


async def test_R20_a_resumed_call_hears_its_question_filled_in(db: Engine) -> None:
    """FlowRunner.resume says ``f"Welcome back. {step.say}"`` without fill(): a caller resumed at "Thank you,
    {name}. Which day?" hears the braces (and the step's recorded prompt is dropped)."""
    store_flow(db, "booking2", "name", [
        {"id": "name", "say": "Your name?", "collect": {"var": "name"}, "next": "date"},
        {"id": "date", "say": "Thank you, {name}. Which day?", "collect": {"var": "date", "type": "date"},
         "next": "end"},
        {"id": "end", "end": "done"}])
    runner = FlowRunner(db)
    reply = await runner.start("booking2", channel="voice", variables={"caller": "+15550001"})
    await runner.answer(reply.run_id, "Maria")
    resumed = await runner.resume(reply.run_id)
    assert resumed.text == "Welcome back. Thank you, Maria. Which day?"


async def test_R21_a_call_runs_every_ask_agent_step_of_a_chain(db: Engine, tmp_path: Path) -> None:
    """FlowResponder._play answers at most MAX_AGENT_ROUNDS (8) agent requests per caller turn and then stops with
    the ninth still pending (``_agent_pending`` already reset): the run waits for ``ask_agent`` forever and every
    later input is ignored (the caller hears the fallback).  The checker accepts the chain (no loop), and text
    channels (drive: 32 rounds, then _continue recovers) do not fail the same way."""
    from tests.voice.conftest import ScriptedResponder
    from voicebot.config import Settings
    from voicebot.flows.voice import FlowResponder
    from voicebot.pipeline.responder import CallContext, CallerInput

    steps: list[dict[str, Any]] = [
        {"id": "menu", "say": "Press 1 for our story.",
         "collect": {"var": "choice", "type": "choice", "choices": {"story": ["1"]}}, "next": "q0"}]
    steps += [{"id": f"q{i}", "ask_agent": f"Tell part {i} of our story.", "next": f"q{i + 1}"} for i in range(10)]
    steps.append({"id": "q10", "say": "That is all.", "end": "done"})
    store_flow(db, "story", "menu", steps)
    agent = ScriptedResponder()
    flows = FlowResponder(FlowRunner(db), agent, settings=Settings().with_(data_dir=tmp_path / "data"), flow="story")
    from voicebot.calls.store import create_call

    call_id, _ = create_call(db, channel_id="review", caller="+15550001", did="200", agent_id=None,
                             direction="inbound", worker="review")
    ctx = CallContext(call_id=call_id, channel_id="review", caller="+15550001", did="200", agent_id=0,
                      agent_name="demo", greeting="", fallback="Sorry?")
    async for _ in flows.respond_input(ctx, CallerInput("start")):
        pass
    async for _ in flows.respond_input(ctx, CallerInput("dtmf", text="1", keys="1")):
        pass
    assert len(agent.heard) == 10, agent.heard
