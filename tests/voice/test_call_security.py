"""Attacks on the call path, on real calls: real Asterisk, real pjsua2 caller, real Eva ARI app.

* X7 (review F7): a request URI user ``1,agent=demo,direction=outbound,did=...`` must not add Stasis arguments,
  pick the agent or make the call look outbound; with a dialplan that forgets to FILTER ``${EXTEN}``, Eva itself
  must still ignore ``agent=``/``direction=`` on a channel it did not originate.
* X8 (F9): transfers to a number Eva answers, to an unknown department and to an arbitrary external number:
  no dead air, no overwritten outcome, a clear spoken result.
* X4 (F4): a call whose caller ID equals a WhatsApp contact's number must not see that conversation's memory,
  unless it came in on a trunk the admin marked as delivering verified caller IDs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlmodel import col, select

from models import Agent, Call, CallTurn, Conversation, Message
from models.db import session_scope
from tests.conftest import Caller
from tests.voice.conftest import ScriptedResponder, forget_contact, load, transcribe, transcribe_regions
from voicebot.agent import store
from voicebot.asterisk.process import Asterisk
from voicebot.llm.base import ChatMessage, GenerationOptions, LanguageModel, LlmEvent, ToolSpec
from voicebot.pipeline.agent_responder import AgentResponder
from voicebot.pipeline.responder import ToolCall
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async
from voicebot.stt.whisper import WhisperStt

pytestmark = pytest.mark.asyncio(loop_scope="session")  # asterisk/models marks: derived (tests/conftest.py)

SPOOFED = "+15551234567"


def _calls(runtime: EvaRuntime, after_id: int) -> list[Call]:
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        return list(session.exec(select(Call).where(col(Call.id) > after_id).order_by(col(Call.id))).all())


def _last_call_id(runtime: EvaRuntime) -> int:
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        last = session.exec(select(Call.id).order_by(col(Call.id).desc())).first()
        return int(last or 0)


async def _settled(runtime: EvaRuntime) -> None:
    """Teardown is asynchronous: wait until Eva holds no call any more."""
    assert runtime.voice is not None
    for _ in range(100):
        if not runtime.voice.calls:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"calls still live: {runtime.voice.calls}")


# ---------------------------------------------------------------------------------------------- X7 / F7
async def test_commas_in_the_dialled_number_cannot_pick_the_agent_or_forge_an_outbound_call(
        runtime: EvaRuntime, caller: Caller, asterisk: Asterisk) -> None:
    before = _last_call_id(runtime)
    result = await place_call_async(caller.script(f"1,agent=demo,direction=outbound,did={SPOOFED}", timeout=10,
                                                  record=False))
    assert result.connected and result.remote_hangup, result
    await _settled(runtime)
    rows = _calls(runtime, before)
    assert len(rows) == 1, rows
    call = rows[0]
    # Inbound, from the real caller ID, routed by the real DID rule (no route for this number: an apology).
    assert call.direction == "inbound", call
    assert call.caller == "caller", call
    assert call.agent_id is None and call.outcome == "no_route", call
    assert set(call.did) <= set("0123456789+*#"), call.did  # the dialplan FILTERed ${EXTEN}


@pytest.fixture
def unfiltered_dialplan(asterisk: Asterisk) -> Iterator[None]:
    """A dialplan as a careless designer might write it: ``${EXTEN}`` passed to Stasis unfiltered."""
    path = asterisk.settings.asterisk_dir / "etc" / "dialplan" / "zz-unfiltered-test.conf"
    path.write_text("[eva-inbound]\nexten => _8X.,1,Stasis(${EVA_APP},did=${EXTEN})\n same => n,Hangup()\n")
    path.chmod(0o644)
    asterisk.cli("dialplan reload")
    try:
        assert "_8X." in asterisk.cli("dialplan show eva-inbound")
        yield
    finally:
        path.unlink()
        asterisk.cli("dialplan reload")


@pytest.mark.usefixtures("unfiltered_dialplan")
async def test_eva_ignores_agent_and_direction_arguments_on_calls_it_did_not_place(
        runtime: EvaRuntime, caller: Caller) -> None:
    before = _last_call_id(runtime)
    result = await place_call_async(caller.script(f"81,agent=demo,direction=outbound,did={SPOOFED}", timeout=10,
                                                  record=False))
    assert result.connected, result
    await _settled(runtime)
    (call,) = _calls(runtime, before)
    assert (call.direction, call.caller, call.agent_id, call.outcome) == ("inbound", "caller", None, "no_route")
    assert call.did == "81"  # the dialplan author's did= came first and wins over the injected one


# ---------------------------------------------------------------------------------------------- X8 / F9
@pytest.fixture
def transfer_setup(runtime: EvaRuntime) -> Iterator[int]:
    """demo may transfer to "operator" (extension 600, the self-test prompt) and "sales" (700: a number Eva
    answers with the sales agent).  Yields the sales agent's id."""
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        demo = store.get_agent_by_name(session, "demo")
        original = dict(demo.transfer_targets or {})
        store.update_agent(session, int(demo.id or 0), {"transfer_targets": {"operator": "600", "sales": "700"}})
        sales = session.exec(select(Agent).where(Agent.name == "sales-test")).first()
        if sales is None:
            sales = store.create_agent(session, {"name": "sales-test",
                                                 "greeting": "Sales desk here, what would you like to buy?"})
            store.create_route(session, {"did": "700", "agent_id": sales.id})
        sales_id = int(sales.id or 0)
    try:
        yield sales_id
    finally:
        with session_scope(runtime.engine) as session:
            demo = store.get_agent_by_name(session, "demo")
            store.update_agent(session, int(demo.id or 0), {"transfer_targets": original})


@pytest.mark.usefixtures("transfer_setup")
async def test_transfer_tool_continues_the_call_in_the_dialplan(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path],
        whisper: WhisperStt) -> None:
    # Extension 600 plays the self-test prompt: hearing it proves the caller landed there.
    responder.script = lambda text: ["Let me transfer you.", ToolCall("transfer_call", {"target": "Operator"})]
    before = _last_call_id(runtime)
    result = await place_call_async(caller.script("100", Action("play", at=5.0, path=str(say("Operator please."))),
                                                  timeout=20))
    assert result.connected, result
    heard = transcribe(whisper, load(result.record_path)).lower()
    assert "transfer you" in heard and "self test" in heard.replace("-", " "), heard
    await _settled(runtime)
    (call,) = _calls(runtime, before)
    assert call.outcome == "transferred"


async def test_transfer_to_a_number_eva_answers_starts_a_new_session_and_keeps_the_first_outcome(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path],
        whisper: WhisperStt, transfer_setup: int) -> None:
    responder.script = lambda text: ["Let me transfer you.", ToolCall("transfer_call", {"target": "sales"})]
    before = _last_call_id(runtime)
    result = await place_call_async(caller.script("100", Action("play", at=5.0, path=str(say("Sales please."))),
                                                  timeout=17))
    assert result.connected and not result.remote_hangup, result  # no dead air, no dropped call
    heard = transcribe(whisper, load(result.record_path)).lower()
    # The sales agent answered ("Sales desk here, what would you like to buy?"; Whisper tiny has heard "tell us desk
    # here"): its greeting's words, none of which the demo agent says.
    assert "transfer you" in heard and "desk here" in heard and "like to buy" in heard, heard
    await _settled(runtime)
    first, second = _calls(runtime, before)
    assert first.channel_id == second.channel_id and (first.generation, second.generation) == (0, 1)
    assert first.outcome == "transferred" and first.agent_id != second.agent_id  # history kept
    assert second.agent_id == transfer_setup and second.direction == "inbound" and second.did == "700"
    assert second.outcome == "caller_hangup" and second.ended_at is not None


@pytest.mark.usefixtures("transfer_setup")
async def test_transfers_to_unknown_departments_or_arbitrary_numbers_are_refused_aloud_and_the_call_goes_on(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path],
        whisper: WhisperStt) -> None:
    targets = iter(["accounting", "+19005550123"])

    def script(text: str) -> Any:
        target = next(targets, None)
        if target is None:
            return "Happy to help with that."
        return ["One moment.", ToolCall("transfer_call", {"target": target})]

    responder.script = script
    question = say("Please put me through.")
    before = _last_call_id(runtime)
    result = await place_call_async(caller.script(
        "100", Action("play", when_quiet=0.8, path=str(question)), Action("play", when_quiet=1.0, path=str(question)),
        Action("play", when_quiet=1.0, path=str(question)), Action("hangup", when_quiet=2.5), timeout=45))
    assert result.connected and not result.remote_hangup, result
    heard = transcribe_regions(whisper, load(result.record_path)).lower()
    assert heard.count("can't transfer") + heard.count("cannot transfer") >= 2, heard
    assert "operator or sales" in heard, heard  # the refusal says where the caller can go
    assert "happy to help" in heard, heard  # the call went on
    await _settled(runtime)
    (call,) = _calls(runtime, before)  # nothing dialled anywhere: one session
    assert call.outcome == "caller_hangup", call
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        turns = list(session.exec(select(CallTurn).where(CallTurn.call_id == call.id)))
    assert sum("can't transfer" in t.bot_text for t in turns) == 2, [t.bot_text for t in turns]


# ---------------------------------------------------------------------------------------------- X4 / F4
class RecordingLlm(LanguageModel):
    """The real LLM, with the messages of every request kept for the test to read."""

    def __init__(self, inner: LanguageModel) -> None:
        self.inner = inner
        self.name = inner.name
        self.supports_tools = inner.supports_tools
        self.requests: list[list[ChatMessage]] = []

    @property
    def default_model(self) -> str:
        return self.inner.default_model

    def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
               knowledge: Sequence[str] = (),
               options: GenerationOptions | None = None) -> AsyncGenerator[LlmEvent, None]:
        self.requests.append(list(messages))
        return self.inner.stream(messages, tools=tools, knowledge=knowledge, options=options)

    async def list_models(self) -> list[str]:
        return await self.inner.list_models()

    async def close(self) -> None:
        """The inner model belongs to the session fixture."""


@pytest_asyncio.fixture(loop_scope="session")
async def recording_agent(runtime: EvaRuntime, agent_responder: AgentResponder) -> AsyncIterator[RecordingLlm]:
    from voicebot.agent.core import AgentCore

    assert runtime.voice is not None and runtime.engine is not None
    core = agent_responder.core
    llm = RecordingLlm(core.llm)
    scripted = runtime.voice.responder
    runtime.voice.responder = AgentResponder(runtime.engine, AgentCore(core.settings, runtime.engine, llm,
                                                                       core.knowledge))
    try:
        yield llm
    finally:
        runtime.voice.responder = scripted


@pytest_asyncio.fixture(loop_scope="session")
async def whatsapp_history(runtime: EvaRuntime) -> AsyncIterator[int]:
    """What a signed WhatsApp message from 15551234567 left behind: the contact, its conversation with demo.
    Yields the contact id."""
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        contact = store.find_or_create_contact(session, whatsapp_id=SPOOFED[1:], verified=True)
        demo = store.get_agent_by_name(session, "demo")
        conversation = Conversation(channel="whatsapp", contact_id=contact.id, agent_id=demo.id,
                                    external_id="wa-test")
        session.add(conversation)
        session.flush()
        session.add(Message(conversation_id=conversation.id or 0, role="user", text="My order number is 4711."))
        session.add(Message(conversation_id=conversation.id or 0, role="assistant",
                            text="Thank you, I noted order 4711."))
        contact_id = int(contact.id or 0)
    yield contact_id
    await forget_contact(runtime, contact_id)


@pytest_asyncio.fixture(loop_scope="session")
async def verified_trunk(runtime: EvaRuntime, asterisk: Asterisk) -> AsyncIterator[str]:
    """An admin-managed trunk at 127.0.0.7, marked as delivering verified caller IDs (rendered, reloaded)."""
    from admin_api.ami import AmiClient
    from admin_api.asterisk_link import AsteriskLink
    from admin_api.trunks import TrunkService

    assert runtime.engine is not None
    ami = AmiClient(runtime.settings)
    trunks = TrunkService(runtime.engine, AsteriskLink(runtime.settings, ami))
    trunk = await trunks.create({"name": "attested", "host": "127.0.0.7", "verified_caller_id": True})
    try:
        shown = await asyncio.to_thread(asterisk.cli, "pjsip show endpoint trunk-attested")
        # Rendered with RTP on the SIP address (review F14), and Asterisk took it.
        assert re.search(r"bind_rtp_to_media_address\s*:\s*true", shown), shown
        assert re.search(r"media_address\s*:\s*127\.0\.0\.1", shown), shown
        yield "127.0.0.7"
    finally:
        await trunks.delete(int(trunk.id or 0))
        await ami.close()


def _voice_conversation(runtime: EvaRuntime, call: Call) -> Conversation:
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        found = session.exec(select(Conversation).where(Conversation.channel == "voice",
                                                        Conversation.external_id == call.channel_id)).first()
        assert found is not None, "the call never reached the agent"
        return found


async def test_spoofed_caller_id_does_not_open_the_whatsapp_contacts_memory_but_a_verified_trunk_does(
        runtime: EvaRuntime, caller: Caller, say: Callable[[str], Path], recording_agent: RecordingLlm,
        whatsapp_history: int, verified_trunk: str) -> None:
    question = say("What was my order number?")

    # 1. The local carrier: caller ID is whatever the caller claims.
    before = _last_call_id(runtime)
    result = await place_call_async(caller.script("100", Action("play", at=5.0, path=str(question)), timeout=15,
                                                  record=False, from_user=SPOOFED))
    assert result.connected, result
    await _settled(runtime)
    (call,) = _calls(runtime, before)
    assert call.caller == SPOOFED
    conversation = _voice_conversation(runtime, call)
    assert conversation.contact_id is None  # not the WhatsApp contact, not any contact
    assert recording_agent.requests, "the agent was never asked"
    prompt = " ".join(m.content for request in recording_agent.requests for m in request)
    assert "4711" not in prompt, prompt

    # 2. The same caller ID on a trunk the admin marked as verified: the caller is the WhatsApp contact.
    recording_agent.requests.clear()
    before = _last_call_id(runtime)
    result = await place_call_async(caller.script("100", Action("play", at=5.0, path=str(question)), timeout=15,
                                                  record=False, from_user=SPOOFED, bind_ip=verified_trunk))
    assert result.connected, result
    await _settled(runtime)
    (call,) = _calls(runtime, before)
    conversation = _voice_conversation(runtime, call)
    assert conversation.contact_id == whatsapp_history
    prompt = " ".join(m.content for request in recording_agent.requests for m in request)
    assert "4711" in prompt, prompt



# ---------------------------------------------------------------------------------------------- L11
async def test_a_dtmf_flood_is_merged_into_at_most_one_turn_per_second(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder) -> None:
    # Review L11: every '#' of "1#1#1#..." started (and cancelled) an LLM turn and stored two messages.
    flood = "1#" * 12
    before = _last_call_id(runtime)
    result = await place_call_async(caller.script("100", Action("dtmf", at=1.0, digits=flood), timeout=9,
                                                  record=False))
    assert result.connected, result
    await _settled(runtime)
    (call,) = _calls(runtime, before)
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        turns = list(session.exec(select(CallTurn).where(CallTurn.call_id == call.id, CallTurn.kind == "dtmf")))
    keys = "".join(t.user_text.rsplit("(DTMF: ", 1)[1].rstrip(")") for t in turns)
    print(f"\n{len(flood)} keys in {len(turns)} DTMF turn(s)")
    assert 1 <= len(turns) <= 8, [t.user_text for t in turns]  # ~1 per second over the ~7 s of the flood
    # Every key reached the agent (on a loaded machine RFC 4733 can deliver a key twice, never fewer).
    assert keys.count("1") >= 12, keys


# ---------------------------------------------------------------------------------------------- F7: Eva's own
@pytest.mark.parametrize("proof", [True, False], ids=["placed-by-eva", "forged-arguments"])
async def test_only_a_call_eva_originated_counts_as_outbound(runtime: EvaRuntime, proof: bool) -> None:
    """A real originate through ARI (into a Local channel that plays the self-test prompt), exactly as the
    admin API's outbound calls do: with the EVA_ORIGIN proof the call is outbound for the requested agent;
    the same arguments without it are a forgery and the call is inbound, routed by its DID."""
    import uuid

    assert runtime.voice is not None
    ari = runtime.voice.ari
    before = _last_call_id(runtime)
    channel_id = f"eva-out-{uuid.uuid4().hex[:16]}"
    await ari.originate("Local/600@eva-inbound", app_args="agent=demo,did=600,direction=outbound",
                        channel_id=channel_id, variables=ari.origin_variables(channel_id) if proof else None)
    for _ in range(100):
        if _calls(runtime, before):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    await ari.hangup(channel_id)
    await _settled(runtime)
    (call,) = _calls(runtime, before)
    assert call.channel_id == channel_id
    if proof:
        assert (call.direction, call.caller, call.did) == ("outbound", "600", "600"), call
        assert call.agent_id is not None
    else:
        assert (call.direction, call.agent_id, call.did) == ("inbound", None, "600"), call  # 600 has no route


async def test_outbound_calls_placed_through_ami_carry_the_origin_proof(runtime: EvaRuntime) -> None:
    # The admin API's default call control (AMI Originate) must mark its channels too, or they would be
    # taken for forgeries.  The callee never answers here, so the proof is read off the ringing channel.
    from admin_api.ami import AmiCallControl, AmiClient
    from admin_api.control import OriginateRequest
    from voicebot.ari.origin import ORIGIN_VARIABLE

    assert runtime.voice is not None
    ami = AmiClient(runtime.settings)
    try:
        channel_id = await AmiCallControl(ami, runtime.settings).originate(OriginateRequest(
            agent_id=1, agent_name="demo", number="5555", endpoint="carrier", timeout_s=10))
        token = ""
        for _ in range(50):
            token = await runtime.voice.ari.get_variable(channel_id, ORIGIN_VARIABLE, default="")
            if token:
                break
            await asyncio.sleep(0.1)
        assert runtime.voice.ari.is_eva_origin(channel_id, token), token
        await runtime.voice.ari.hangup(channel_id)
    finally:
        await ami.close()


@pytest.fixture
def self_transfer(runtime: EvaRuntime) -> Iterator[None]:
    """demo lists its own number as a transfer target (a designer's slip)."""
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        demo = store.get_agent_by_name(session, "demo")
        original = dict(demo.transfer_targets or {})
        store.update_agent(session, int(demo.id or 0), {"transfer_targets": {"reception": "100"}})
    try:
        yield
    finally:
        with session_scope(runtime.engine) as session:
            demo = store.get_agent_by_name(session, "demo")
            store.update_agent(session, int(demo.id or 0), {"transfer_targets": original})


@pytest.mark.usefixtures("self_transfer")
async def test_a_transfer_back_into_the_same_agent_is_refused(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path],
        whisper: WhisperStt) -> None:
    responder.script = lambda text: ["One moment.", ToolCall("transfer_call", {"target": "reception"})]
    before = _last_call_id(runtime)
    result = await place_call_async(caller.script("100", Action("play", at=5.0, path=str(say("Reception please."))),
                                                  timeout=14))
    assert result.connected and not result.remote_hangup, result
    heard = transcribe(whisper, load(result.record_path)).lower()
    assert "can't transfer" in heard or "cannot transfer" in heard, heard
    await _settled(runtime)
    (call,) = _calls(runtime, before)  # no second session: the call never left
    assert call.outcome == "caller_hangup"
