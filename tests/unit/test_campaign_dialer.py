"""The campaign dialer without Asterisk: the pure cause → outcome mapping and failover decisions, then the dialer
itself on a real (SQLite) database against a fake ARI that answers, refuses or lets ring each number as told --
claims, outcomes and retries recorded, trunk failover, pause, pacing, and a restart that dials nobody twice.

The real calls (real Asterisk, pjsua2 callees) are in ``tests/voice/test_campaign_dialer.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from models import Agent, Call
from models.campaigns import Campaign, CampaignAttempt, CampaignEntry
from models.db import make_engine, session_scope, upgrade
from models.trunks import SipTrunk
from voicebot.ari import AriEvent
from voicebot.ari.events import parse_event
from voicebot.campaigns import store
from voicebot.campaigns.dialer import Dialer, classify, parse_channel_id, sip_status
from voicebot.campaigns.importer import parse_csv
from voicebot.errors import AriError
from voicebot.pipeline.responder import CallContext, CallerInput, ReplyDone


# ------------------------------ pure ------------------------------------------------------------------
@pytest.mark.parametrize(("cause", "tech", "outcome", "failover"), [
    (17, "", "busy", False),
    (0, "SIP 486 Busy Here", "busy", False),
    (18, "", "no_answer", False),
    (19, "SIP 480 Temporarily Unavailable", "no_answer", False),
    (16, "", "no_answer", False),
    (0, "", "no_answer", False),
    (21, "SIP 603 Decline", "failed", False),
    (1, "SIP 404 Not Found", "failed", False),
    (28, "", "failed", False),
    (34, "SIP 503 Service Unavailable", "failed", True),
    (38, "SIP 502 Bad Gateway", "failed", True),
    (41, "", "failed", True),
    (42, "", "failed", True),
    (47, "", "failed", True),
    (102, "SIP 504 Server Time-out", "failed", True),
    (0, "SIP 503 Service Unavailable", "failed", True),
])
def test_causes_map_to_outcomes_and_only_trunk_failures_fail_over(cause: int, tech: str, outcome: str,
                                                                   failover: bool) -> None:
    verdict = classify(cause, tech)
    assert (verdict.outcome, verdict.failover) == (outcome, failover), verdict
    assert f"cause {cause}" in verdict.sip_cause and len(verdict.sip_cause) <= 64


def test_the_recorded_cause_names_the_sip_status_and_q850_cause() -> None:
    assert classify(17, "SIP 486 Busy Here").sip_cause == "486 / cause 17 (busy)"
    assert classify(34).sip_cause == "cause 34 (no circuit)"
    assert sip_status("PJSIP 503") == 503 and sip_status("") is None


def test_campaign_channel_ids_name_campaign_and_attempt() -> None:
    assert parse_channel_id("eva-camp-3-41-0-a1b2c3") == (3, 41)
    assert parse_channel_id("eva-out-0123456789abcdef") is None
    assert parse_channel_id("eva-camp-3-41-0-a1b2c3,x") is None


# ------------------------------ the dialer on a fake ARI ------------------------------------------------
class FakeAri:
    """Answers ``originate`` like Asterisk would and sends the channel's events to the dialer: ``behaviour``
    maps a number to ``("answer", seconds)``, ``("cause", q850)`` or ``("ring",)``; ``trunk_down`` endpoints
    fail with cause 34; ``refuse`` endpoints make the originate itself fail."""

    def __init__(self) -> None:
        self.behaviour: dict[str, tuple[Any, ...]] = {}
        self.trunk_down: set[str] = set()
        self.refuse: set[str] = set()
        self.listeners: list[Any] = []
        self.live: dict[str, str] = {}
        self.dialled: list[tuple[str, str]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.peak = 0
        """The most channels up at once."""

    def emit(self, kind: str, channel_id: str, cause: int = 0) -> None:
        event: AriEvent = parse_event({"type": kind, "cause": cause, "channel": {
            "id": channel_id, "name": f"PJSIP/x-{len(self.dialled):08x}", "state": "Ring"}})
        for listener in list(self.listeners):
            listener(event)

    app = "eva-test"

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      ok_missing: bool = False) -> Any:
        if method == "GET" and path.startswith("channels/"):
            return {"id": path.split("/")[1]} if path.split("/")[1] in self.live else None
        return {}

    def origin_variables(self, channel_id: str) -> dict[str, str]:
        return {"EVA_ORIGIN": "x"}

    async def channels(self) -> list[dict[str, Any]]:
        return [{"id": cid, "name": name} for cid, name in self.live.items()]

    async def originate(self, endpoint: str, *, app_args: str, caller_id: str = "", channel_id: str = "",
                        timeout: int = 30, variables: dict[str, str] | None = None) -> dict[str, Any]:
        number, _, trunk = endpoint.removeprefix("PJSIP/").partition("@")
        self.dialled.append((number, trunk))
        if trunk in self.refuse:
            raise AriError("Allocation failed", code="ari_request_failed")
        self.live[channel_id] = f"PJSIP/{trunk}-0000{len(self.dialled):04x}"
        self.peak = max(self.peak, len(self.live))
        task = asyncio.create_task(self._play(number, trunk, channel_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return {"id": channel_id}

    async def _play(self, number: str, trunk: str, channel_id: str) -> None:
        await asyncio.sleep(0.05)
        how = ("cause", 34) if trunk in self.trunk_down else self.behaviour.get(number, ("answer", 0.2))
        if how[0] == "answer":
            self.emit("StasisStart", channel_id)
            await asyncio.sleep(how[1])
            self.gone(channel_id, 16)
        elif how[0] == "cause":
            self.gone(channel_id, how[1])
        # "ring": nothing until hung up

    def gone(self, channel_id: str, cause: int) -> None:
        if self.live.pop(channel_id, None) is not None:
            self.emit("ChannelDestroyed", channel_id, cause)

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        self.gone(channel_id, 16)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = make_engine(f"sqlite:///{tmp_path / 'dialer.db'}")
    upgrade(made)
    yield made
    made.dispose()


ALWAYS = {day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def campaign_with(engine: Engine, numbers: list[str], **rules: Any) -> int:
    with session_scope(engine) as session:
        agent = session.exec(select(Agent).where(Agent.name == "dialer-agent")).first()
        if agent is None:
            agent = Agent(name="dialer-agent")
            session.add(agent)
            session.flush()
        count = len(list(session.exec(select(Campaign.id)).all()))
        campaign = store.create_campaign(session, {
            "name": f"c{count}", "agent_id": agent.id, "timezone": "UTC",
            "rules": {"windows": ALWAYS, "ring_timeout_s": 5, **rules}})
        assert campaign.id is not None
        now = datetime.now(UTC)
        csv = ("phone\n" + "\n".join(numbers) + "\n").encode()
        store.apply_import(session, campaign.id, parse_csv(csv), now=now)
        store.change_status(session, campaign.id, "start", now=now)
        return campaign.id


def attempts(engine: Engine, campaign_id: int) -> list[CampaignAttempt]:
    with session_scope(engine) as session:
        return list(session.exec(select(CampaignAttempt).where(CampaignAttempt.campaign_id == campaign_id)
                                 .order_by(col(CampaignAttempt.id))).all())


def phones(engine: Engine) -> dict[int, str]:
    with session_scope(engine) as session:
        return {e.id or 0: e.phone for e in session.exec(select(CampaignEntry)).all()}


async def until(predicate: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


def dialer_for(engine: Engine, ari: FakeAri, **kwargs: Any) -> Dialer:
    return Dialer(engine, ari, worker="test", listeners=ari.listeners, poll_s=0.1, **kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_each_outcome_is_recorded_with_its_cause_and_retried_by_the_rules(engine: Engine) -> None:
    ari = FakeAri()
    ari.behaviour = {"+15550000002": ("cause", 17), "+15550000003": ("ring",), "+15550000004": ("cause", 21)}
    campaign_id = campaign_with(engine, ["+15550000001", "+15550000002", "+15550000003", "+15550000004"],
                                pacing={"max_concurrent": 4, "max_per_minute": 60},
                                retry={"busy": {"max_attempts": 2, "interval_minutes": 1}})
    dialer = dialer_for(engine, ari)
    await dialer.start()
    try:
        await until(lambda: sum(a.outcome is not None for a in attempts(engine, campaign_id)) == 4)
    finally:
        await dialer.close()
    numbers = phones(engine)
    rows = attempts(engine, campaign_id)
    by_number = {numbers[a.entry_id]: a for a in rows if a.number == 1}
    assert by_number["+15550000001"].outcome == "answered"
    assert (by_number["+15550000002"].outcome, by_number["+15550000002"].sip_cause) == ("busy", "cause 17 (busy)")
    assert (by_number["+15550000003"].outcome, by_number["+15550000003"].sip_cause) == ("no_answer", "rang 5 s")
    assert (by_number["+15550000004"].outcome, by_number["+15550000004"].sip_cause) == ("failed",
                                                                                       "cause 21 (rejected)")
    retries = [a for a in rows if a.number == 2]
    assert [numbers[a.entry_id] for a in retries] == ["+15550000002"]  # only busy has a retry rule
    assert retries[0].outcome is None and retries[0].claimed_by == ""
    busy = by_number["+15550000002"]
    assert busy.ended_at is not None
    assert timedelta(seconds=59) < retries[0].due_at.replace(tzinfo=UTC) - busy.ended_at.replace(tzinfo=UTC)
    assert [n for n, _ in ari.dialled].count("+15550000002") == 1  # the retry is not due yet


@pytest.mark.asyncio
async def test_a_trunk_failure_moves_the_attempt_to_the_next_trunk_but_busy_does_not(engine: Engine) -> None:
    with session_scope(engine) as session:
        for name in ("one", "two", "three"):
            session.add(SipTrunk(name=name, host="127.0.0.9"))
        session.flush()
        ids = [t.id for t in session.exec(select(SipTrunk).order_by(col(SipTrunk.id))).all()]
    ari = FakeAri()
    ari.refuse = {"trunk-one"}  # the originate itself fails
    ari.trunk_down = {"trunk-two"}  # the channel fails with cause 34
    ari.behaviour = {"+15550000012": ("cause", 17)}
    campaign_id = campaign_with(engine, ["+15550000011", "+15550000012"], trunk_ids=ids,
                                pacing={"max_concurrent": 1, "max_per_minute": 60})
    dialer = dialer_for(engine, ari)
    await dialer.start()
    try:
        await until(lambda: sum(a.outcome is not None for a in attempts(engine, campaign_id)) == 2)
    finally:
        await dialer.close()
    assert [t for n, t in ari.dialled if n == "+15550000011"] == ["trunk-one", "trunk-two", "trunk-three"]
    assert [t for n, t in ari.dialled if n == "+15550000012"] == ["trunk-one", "trunk-two", "trunk-three"]
    outcomes = {phones(engine)[a.entry_id]: a.outcome for a in attempts(engine, campaign_id)}
    assert outcomes == {"+15550000011": "answered", "+15550000012": "busy"}
    # Busy on the working trunk is the callee's answer: no further trunk was tried (there is none, and there
    # would be none: classify(17) never fails over).
    assert not classify(17).failover


@pytest.mark.asyncio
async def test_pause_stops_new_dials_and_in_flight_calls_finish(engine: Engine) -> None:
    ari = FakeAri()
    numbers = [f"+1555000002{i}" for i in range(5)]
    ari.behaviour = {n: ("answer", 0.6) for n in numbers}
    campaign_id = campaign_with(engine, numbers, pacing={"max_concurrent": 2, "max_per_minute": 60})
    dialer = dialer_for(engine, ari)
    await dialer.start()
    try:
        await until(lambda: len(ari.dialled) >= 2)
        assert len(ari.live) <= 2  # never more than max_concurrent at once
        with session_scope(engine) as session:
            store.change_status(session, campaign_id, "pause", now=datetime.now(UTC))
        dialled_at_pause = len(ari.dialled)
        await until(lambda: not ari.live and not dialer._placing)
        await asyncio.sleep(0.5)
        assert len(ari.dialled) == dialled_at_pause  # nothing new after the pause
    finally:
        await dialer.close()
    ended = [a for a in attempts(engine, campaign_id) if a.outcome is not None]
    assert len(ended) == dialled_at_pause and {a.outcome for a in ended} == {"answered"}
    assert ari.peak == 2  # max_concurrent, never more


@pytest.mark.asyncio
async def test_per_minute_pacing_holds_the_rest(engine: Engine) -> None:
    ari = FakeAri()
    numbers = [f"+1555000003{i}" for i in range(5)]
    campaign_id = campaign_with(engine, numbers, pacing={"max_concurrent": 5, "max_per_minute": 3})
    dialer = dialer_for(engine, ari)
    await dialer.start()
    try:
        await until(lambda: sum(a.outcome is not None for a in attempts(engine, campaign_id)) == 3)
        await asyncio.sleep(0.6)
    finally:
        await dialer.close()
    assert len(ari.dialled) == 3


@pytest.mark.asyncio
async def test_a_restart_dials_nobody_twice_and_loses_no_attempt(engine: Engine) -> None:
    ari = FakeAri()
    numbers = [f"+1555000004{i}" for i in range(6)]
    ari.behaviour = {n: ("answer", 0.3) for n in numbers}
    campaign_id = campaign_with(engine, numbers, pacing={"max_concurrent": 2, "max_per_minute": 60})
    first = dialer_for(engine, ari)
    await first.start()
    await until(lambda: len(ari.dialled) >= 2)
    await first.close()  # a graceful restart mid-campaign: the answered calls are recorded
    second = dialer_for(engine, ari)
    await second.start()
    try:
        await until(lambda: sum(a.outcome is not None for a in attempts(engine, campaign_id)) == 6)
    finally:
        await second.close()
    dialled = [n for n, _ in ari.dialled]
    assert sorted(dialled) == sorted(numbers), dialled  # each number exactly once
    assert {a.outcome for a in attempts(engine, campaign_id)} == {"answered"}


@pytest.mark.asyncio
async def test_an_attempt_a_crashed_worker_held_is_recorded_uncertain_not_dialled_again(engine: Engine) -> None:
    ari = FakeAri()
    campaign_id = campaign_with(engine, ["+15550000051", "+15550000052"])
    rows = attempts(engine, campaign_id)
    past = datetime.now(UTC) - timedelta(minutes=5)
    with session_scope(engine) as session:  # a worker that died while dialling the first number
        session.execute(update(CampaignAttempt).where(col(CampaignAttempt.id) == rows[0].id)
                        .values(claimed_by="gone:worker", lease_until=past, started_at=past))
    dialer = dialer_for(engine, ari)
    await dialer.start()
    try:
        await until(lambda: all(a.outcome is not None for a in attempts(engine, campaign_id)))
    finally:
        await dialer.close()
    after = {a.id: a for a in attempts(engine, campaign_id)}
    assert after[rows[0].id].outcome == "uncertain" and "lease" in after[rows[0].id].sip_cause
    assert after[rows[1].id].outcome == "answered"
    assert [n for n, _ in ari.dialled] == ["+15550000052"]
    assert len(after) == 2  # no retry of the uncertain one


@pytest.mark.asyncio
async def test_an_answered_attempt_links_the_voice_apps_call_row(engine: Engine) -> None:
    ari = FakeAri()
    campaign_id = campaign_with(engine, ["+15550000061"])
    ari.behaviour = {"+15550000061": ("answer", 0.5)}
    dialer = dialer_for(engine, ari)
    real_emit = ari.emit

    def emit(kind: str, channel_id: str, cause: int = 0) -> None:
        if kind == "StasisStart":  # what the voice app does when the channel enters Stasis
            with session_scope(engine) as session:
                session.add(Call(channel_id=channel_id, caller="+15550000061", did="+15550000061",
                                 direction="outbound"))
        real_emit(kind, channel_id, cause)

    ari.emit = emit  # type: ignore[method-assign]
    await dialer.start()
    try:
        await until(lambda: attempts(engine, campaign_id)[0].outcome is not None)
    finally:
        await dialer.close()
    row = attempts(engine, campaign_id)[0]
    with session_scope(engine) as session:
        call = session.get(Call, row.call_id)
        assert call is not None and call.channel_id.startswith(f"eva-camp-{campaign_id}-{row.id}-")


class Echo:
    """A plain responder that answers "ok" and keeps what reached it (the agent behind the opt-out guard)."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    async def respond(self, ctx: CallContext, text: str) -> Any:
        self.heard.append(text)
        yield ReplyDone(text="ok")

    async def mark_interrupted(self, ctx: CallContext, message_id: int | None, spoken_text: str) -> None:
        return None


class InputEcho(Echo):
    """The same, flow-aware: it also takes typed turns (keys as keys)."""

    async def respond_input(self, ctx: CallContext, event: CallerInput) -> Any:
        self.heard.append(f"{event.kind}:{event.keys or event.text}")
        yield ReplyDone(text="ok")


@pytest.mark.asyncio
async def test_the_do_not_call_guard_blocks_the_number_says_goodbye_and_hangs_up(engine: Engine) -> None:
    from models.campaigns import DncEntry
    from voicebot.campaigns.oncall import dnc_guard
    from voicebot.i18n import phrase
    from voicebot.pipeline.responder import TextDelta, ToolCall

    inner = Echo()
    guard = dnc_guard(engine, "+34600111222", "es")(inner)
    ctx = CallContext(call_id=7, channel_id="c", caller="+34600111222", did="+34600111222", agent_id=1,
                      agent_name="a", greeting="", fallback="", language="es")
    assert [e async for e in guard.respond(ctx, "¿Qué horario tienen?")] == [ReplyDone(text="ok")]
    events = [e async for e in guard.respond(ctx, "No me llamen más, por favor.")]
    goodbye = phrase("campaign_call_opted_out", "es")
    assert events == [TextDelta(goodbye), ToolCall("hang_up"), ReplyDone(text=goodbye)]
    assert inner.heard == ["¿Qué horario tienen?"]  # the agent never saw the opt-out
    with session_scope(engine) as session:
        rows = session.exec(select(DncEntry)).all()
        assert [(r.phone, r.source, r.campaign_id) for r in rows] == [("+34600111222", "phrase", None)]


@pytest.mark.parametrize("keys", ["9", "*", "#", "0123456789*#", "A" * 64])
def test_a_key_turns_keys_are_read_back_from_its_text(keys: str) -> None:
    from voicebot.pipeline.dtmf import dtmf_turn_keys, dtmf_turn_text

    assert dtmf_turn_keys(dtmf_turn_text(keys)) == keys
    assert dtmf_turn_keys("Please stop calling me.") is None
    assert dtmf_turn_keys(dtmf_turn_text(keys) + " and more") is None  # only a whole key turn


@pytest.mark.asyncio
async def test_the_opt_out_key_alone_blocks_the_number_and_other_keys_reach_the_agent(engine: Engine) -> None:
    from models.campaigns import DncEntry
    from voicebot.campaigns.oncall import dnc_guard
    from voicebot.pipeline.dtmf import dtmf_turn_text
    from voicebot.pipeline.responder import ToolCall

    ctx = CallContext(call_id=8, channel_id="c", caller="+15550001111", did="+15550001111", agent_id=1,
                      agent_name="a", greeting="", fallback="", language="en")
    plain = Echo()
    guard = dnc_guard(engine, "+15550001111", "en", opt_out_digit="9")(plain)
    assert [e async for e in guard.respond(ctx, dtmf_turn_text("19"))] == [ReplyDone(text="ok")]  # not alone
    events = [e async for e in guard.respond(ctx, dtmf_turn_text("9"))]
    assert ToolCall("hang_up") in events
    assert plain.heard == [dtmf_turn_text("19")]
    # A flow-aware responder gets the keys as an event: the same key is the opt-out there too.
    flow = InputEcho()
    flow_guard = dnc_guard(engine, "+15550002222", "en", opt_out_digit="*")(flow)
    assert hasattr(flow_guard, "respond_input")
    assert [e async for e in flow_guard.respond_input(ctx, CallerInput("dtmf", text="", keys="1"))] == [
        ReplyDone(text="ok")]
    assert ToolCall("hang_up") in [e async for e in flow_guard.respond_input(ctx, CallerInput("dtmf", keys="*"))]
    # Without a configured key, pressing 9 is just a key for the agent.
    unguarded = Echo()
    no_key = dnc_guard(engine, "+15550003333", "en")(unguarded)
    assert [e async for e in no_key.respond(ctx, dtmf_turn_text("9"))] == [ReplyDone(text="ok")]
    with session_scope(engine) as session:
        rows = session.exec(select(DncEntry).order_by(col(DncEntry.id))).all()
        assert [(r.phone, r.source) for r in rows] == [("+15550001111", "dtmf"), ("+15550002222", "dtmf")]


@pytest.mark.asyncio
async def test_answering_machine_detection_leaves_the_message_or_hands_a_person_to_the_agent(
        engine: Engine) -> None:
    gates: dict[str, Any] = {}
    ari = FakeAri()
    numbers = {"+15550000071": "MACHINE", "+15550000072": "HUMAN"}
    verdict_of: dict[str, str] = {}
    handed: list[str] = []
    real_emit = ari.emit

    def emit(kind: str, channel_id: str, cause: int = 0) -> None:
        gate = gates.pop(channel_id, None) if kind == "StasisStart" else None
        real_emit(kind, channel_id, cause)  # the dialer sees every event first, as from the voice app
        if gate is not None:
            gate()
        elif kind == "StasisStart":
            handed.append(channel_id)  # the voice app would start the conversation here

    async def continue_in_dialplan(channel_id: str, context: str, extension: str, priority: int = 1) -> None:
        assert (context, extension) == ("eva-campaign-amd", "s")
        status = verdict_of[channel_id]
        event = parse_event({"type": "ChannelUserevent", "eventname": "EvaAmd", "channel": {"id": channel_id},
                             "userevent": {"status": status, "cause": "LONGGREETING-1600-1500"}})
        for listener in list(ari.listeners):
            listener(event)
        if status == "MACHINE":
            ari.gone(channel_id, 16)
        else:
            ari.emit("StasisStart", channel_id)

    original = ari.originate

    async def originate(endpoint: str, **kwargs: Any) -> dict[str, Any]:
        number = endpoint.removeprefix("PJSIP/").partition("@")[0]
        verdict_of[kwargs["channel_id"]] = numbers[number]
        assert kwargs["variables"]["EVA_VOICEMAIL"] == "vm-sound"
        assert "direction=outbound" in kwargs["variables"]["EVA_CAMPAIGN_ARGS"]
        # The person comes back into Stasis of the worker that placed the call (not the dialplan's global app,
        # which names one worker when several share an Asterisk).
        assert kwargs["variables"]["EVA_APP"] == ari.app
        return await original(endpoint, **kwargs)

    ari.emit = emit  # type: ignore[method-assign]
    ari.originate = originate  # type: ignore[method-assign]
    ari.continue_in_dialplan = continue_in_dialplan  # type: ignore[attr-defined]

    async def sound(text: str, language: str, voice: str) -> str:
        assert text == "Please call us back."
        return "vm-sound"

    campaign_id = campaign_with(engine, list(numbers), voicemail={"message": "Please call us back."},
                                pacing={"max_concurrent": 2, "max_per_minute": 60})
    dialer = dialer_for(engine, ari, stasis_gates=gates, voicemail_sound=sound)
    await dialer.start()
    try:
        await until(lambda: all(a.outcome is not None for a in attempts(engine, campaign_id)))
    finally:
        await dialer.close()
    outcomes = {phones(engine)[a.entry_id]: (a.outcome, a.sip_cause) for a in attempts(engine, campaign_id)}
    assert outcomes["+15550000071"][0] == "voicemail" and "MACHINE" in outcomes["+15550000071"][1]
    assert outcomes["+15550000072"][0] == "answered"
    assert len(handed) == 1 and verdict_of[handed[0]] == "HUMAN"  # only the person reached the agent


@pytest.mark.asyncio
async def test_a_number_put_on_the_list_after_the_import_is_skipped_not_dialled(engine: Engine) -> None:
    ari = FakeAri()
    with session_scope(engine) as session:
        agent = Agent(name="dialer-agent")
        session.add(agent)
    campaign_id = campaign_with(engine, ["+15550000081", "+15550000082"])
    with session_scope(engine) as session:
        store.add_dnc(session, "+15550000082", source="phrase", now=datetime.now(UTC))
    dialer = dialer_for(engine, ari)
    await dialer.start()
    try:
        await until(lambda: all(a.outcome is not None for a in attempts(engine, campaign_id)))
    finally:
        await dialer.close()
    rows = {phones(engine)[a.entry_id]: a for a in attempts(engine, campaign_id)}
    assert rows["+15550000082"].outcome == "dnc_skipped" and rows["+15550000082"].started_at is None
    assert rows["+15550000081"].outcome == "answered"
    assert [n for n, _ in ari.dialled] == ["+15550000081"]


def test_a_campaign_naming_a_trunk_that_does_not_exist_is_refused(engine: Engine) -> None:
    from voicebot.errors import InvalidInput

    with session_scope(engine) as session, pytest.raises(InvalidInput) as refused:
        store.create_campaign(session, {"name": "bad-trunk", "timezone": "UTC", "rules": {"trunk_ids": [99]}})
    assert refused.value.field == "rules.trunk_ids.0"


@pytest.mark.asyncio
async def test_the_inbound_reserve_counts_callers_on_the_line(engine: Engine) -> None:
    ari = FakeAri()
    ari.live["1700000000.1"] = "PJSIP/carrier-00000001"  # a caller already talking to an agent
    ari.live["1700000000.2"] = "UnicastRTP/127.0.0.1:20000-00000002"  # its media: not a call
    numbers = [f"+1555000009{i}" for i in range(4)]
    ari.behaviour = {n: ("answer", 0.3) for n in numbers}
    campaign_id = campaign_with(engine, numbers, pacing={"max_concurrent": 4, "max_per_minute": 60,
                                                         "reserve_inbound": 1})
    dialer = dialer_for(engine, ari, channel_capacity=3)
    await dialer.start()
    try:
        await until(lambda: all(a.outcome is not None for a in attempts(engine, campaign_id)))
    finally:
        await dialer.close()
    # 3 channels, 1 kept free, 1 taken by the caller: one campaign call at a time (the peak also counts the
    # caller's channel and its media channel).
    assert ari.peak - 2 == 1 and len(ari.dialled) == 4


async def test_campaigns_asking_for_the_same_voicemail_at_once_share_one_whole_file(tmp_path: Path) -> None:
    """Two campaigns with one message dial at once: one synthesis, and the WAV Asterisk plays is never half
    written (CI heard an empty voicemail when both wrote the same file side by side)."""
    import numpy as np

    from voicebot.audio import Audio, read_wav
    from voicebot.campaigns.dialer import voicemail_sounds
    from voicebot.config import Settings

    settings = Settings(data_dir=tmp_path)
    spoken: list[str] = []
    release = asyncio.Event()

    class SlowTts:
        async def speak(self, text: str, rate: int, voice: str, deadline: float | None = None) -> Audio:
            spoken.append(text)
            await release.wait()
            return Audio(np.full(rate, 1000, dtype=np.int16), rate)

    sound = voicemail_sounds(settings, SlowTts())
    both = asyncio.gather(sound("Please call us back.", "en", ""), sound("Please call us back.", "en", ""))
    await asyncio.sleep(0.05)
    release.set()
    first, second = await both
    assert first == second and first.endswith("/sounds/" + Path(first).name)
    assert spoken == ["Please call us back."]
    wav = settings.sounds_dir / f"{Path(first).name}.wav"
    assert len(read_wav(wav).samples) == 8000
    assert [p.name for p in settings.sounds_dir.iterdir()] == [wav.name]  # no part file left behind
    wav.unlink()  # an instance folder re-rendered: the next call makes it again
    assert await sound("Please call us back.", "en", "") == first and wav.exists() and len(spoken) == 2


@pytest.mark.asyncio
async def test_campaign_calls_ring_only_into_free_call_slots_of_the_worker(engine: Engine) -> None:
    from voicebot.calls.admission import Admission

    ari = FakeAri()
    slots = Admission(3)
    assert slots.admit("an inbound caller")  # talking to an agent: two slots are left for campaigns
    most = 0

    def voice_app(event: AriEvent) -> None:  # what the voice app does with a campaign call's channel
        nonlocal most
        if event.channel is None:
            return
        if event.type == "StasisStart":
            assert slots.admit(event.channel.id, placed_by_eva=True)
        elif event.type == "ChannelDestroyed":
            slots.release(event.channel.id)
        most = max(most, slots.active)

    ari.listeners.append(voice_app)
    first = [f"+1555000010{i}" for i in range(4)]
    second = [f"+1555000011{i}" for i in range(4)]
    ari.behaviour = {n: ("answer", 0.3) for n in first + second}
    # Two campaigns at once, each allowed four calls: together they must still fit the two free slots.
    ids = [campaign_with(engine, numbers, pacing={"max_concurrent": 4, "max_per_minute": 600})
           for numbers in (first, second)]
    dialer = dialer_for(engine, ari, call_slots=lambda: slots.free)
    await dialer.start()
    try:
        await until(lambda: all(a.outcome is not None for c in ids for a in attempts(engine, c)), within=20)
    finally:
        await dialer.close()
    assert len(ari.dialled) == 8 and all(a.outcome == "answered" for c in ids for a in attempts(engine, c))
    assert ari.peak == 2, ari.peak  # never a third campaign call, ringing or answered
    assert most == 3 and slots.refused == 0  # the worker carried its capacity, never more
