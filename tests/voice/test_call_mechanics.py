"""The voice loop on real calls: real Asterisk, real pjsua2 caller, real Whisper and Piper; scripted agent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import col, select

from models import Call, CallTurn
from models.db import session_scope
from tests.conftest import Caller
from tests.voice.conftest import ScriptedResponder, load, transcribe, transcribe_regions
from voicebot.audio import voiced_regions
from voicebot.metrics import BARGE_INS_TOTAL, CALLS_TOTAL, TURN_STAGE_SECONDS
from voicebot.pipeline.responder import ToolCall
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async
from voicebot.stt.whisper import WhisperStt

pytestmark = pytest.mark.asyncio(loop_scope="session")  # asterisk/models marks: derived (tests/conftest.py)


def _call_row(runtime: EvaRuntime) -> tuple[Call, list[CallTurn]]:
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        call = session.exec(select(Call).order_by(col(Call.id).desc())).first()
        assert call is not None
        turns = list(session.exec(select(CallTurn).where(CallTurn.call_id == call.id).order_by(col(CallTurn.index))))
        return call, turns


async def test_greeting_then_answer_to_what_the_caller_said(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path],
        whisper: WhisperStt) -> None:
    question = say("What time do you open tomorrow?")
    result = await place_call_async(caller.script(
        "100", Action("play", when_quiet=0.8, path=str(question)), Action("hangup", when_quiet=2.5), timeout=25))
    assert result.connected, result
    heard = load(result.record_path)
    text = transcribe(whisper, heard).lower()
    assert "hello, this is" in text  # tiny.en at 8 kHz hears "Eva" as many things
    assert "you said" in text and "open tomorrow" in text, text
    assert responder.heard and "open tomorrow" in responder.heard[0].lower()

    call, turns = _call_row(runtime)
    assert call.agent_id is not None and call.answered_at is not None
    # Both sides of the call were recorded by Asterisk (caller's question and Eva's voice).
    recording = load(call.recording_path)
    assert recording.seconds > 8, recording.seconds
    both = transcribe(whisper, recording).lower()
    assert "open tomorrow" in both and "you said" in both, both
    assert [t.kind for t in turns][:2] == ["greeting", "speech"]
    turn = turns[1]
    assert "open tomorrow" in turn.user_text.lower()
    assert turn.bot_text.startswith("You said:")
    assert not turn.interrupted
    # Every stage is timed, in order, after the caller stopped speaking.
    stages = [turn.stt_done_ms, turn.llm_first_token_ms, turn.first_sentence_ready_ms, turn.tts_first_audio_ms,
              turn.first_frame_out_ms]
    assert all(v is not None and v > 0 for v in stages), stages
    assert stages == sorted(stages), stages  # type: ignore[type-var]
    # The reply starts in the caller's ear after the question ended (no overlap with the question).
    play = result.events[0]
    reply_regions = [r for r in voiced_regions(heard) if r[0] + result.record_offset > play["end"]]
    assert reply_regions, voiced_regions(heard)


LONG_ANSWER = ("Our company was founded many years ago in a small town by the river. "
               "Since then we have grown to serve customers in every region of the country. "
               "We offer a wide range of services, from installation to maintenance and repair. "
               "Our technicians are trained every year and carry the latest tools. "
               "If you have any questions about our history, I am happy to tell you more.")


def _first_voiced(audio_path: Path) -> float:
    regions = voiced_regions(load(str(audio_path)))
    assert regions, "the caller's prompt has no speech"
    return regions[0][0]


def _silence_after(heard_regions: list[tuple[float, float]], t: float) -> float:
    """End of the bot's audio that was playing at time t (recording timeline)."""
    for start, end in heard_regions:
        if start <= t <= end:
            return end
    return t


async def test_barge_in_stops_playout_and_marks_the_turn_interrupted(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path]) -> None:
    responder.script = lambda text: LONG_ANSWER
    question = say("Tell me about your company.")
    interruption = say("Wait, stop, I have another question.")
    barge_ins, stt_turns = BARGE_INS_TOTAL.value(), TURN_STAGE_SECONDS.count(stage="stt")
    calls = CALLS_TOTAL.value(direction="inbound", outcome="caller_hangup")
    unlabelled = CALLS_TOTAL.value(agent="-") + BARGE_INS_TOTAL.value(agent="-")
    result = await place_call_async(caller.script(
        # The interruption starts one second into the reply, wherever the reply falls (a fixed time once landed
        # in a pause between two sentences on a loaded machine).
        "100", Action("play", at=5.0, path=str(question)), Action("play", when_heard=1.0, path=str(interruption)),
        # Time after the interruption for it to become a turn (end of turn + STT) even on a loaded machine.
        Action("hangup", at=20.0), timeout=25))
    assert result.connected, result
    plays = [e for e in result.events if e["kind"] == "play"]
    assert len(plays) == 2, result.events
    barge_at = float(plays[1]["at"])
    heard = load(result.record_path)
    # Bot audio in the caller's ear; pauses under 0.3 s (between words and sentences) are bridged.
    regions = voiced_regions(heard)
    onset = barge_at + _first_voiced(interruption) - result.record_offset
    playing = [r for r in regions if r[0] <= onset <= r[1]]
    assert playing, f"bot was not speaking at the barge-in moment {onset:.2f}: {regions}"
    stopped = _silence_after(regions, onset)
    reaction = stopped - onset
    print(f"\nbarge-in: bot audio stopped {reaction * 1000:.0f} ms after the caller's speech onset")
    # A generous bound that still proves the playout stopped (the long answer had seconds left): the exact
    # reaction time (120-140 ms on a quiet machine, 240 ms on one loaded by parallel test runs) is printed above
    # and is a benchmark's number, not a unit test's.
    assert reaction <= 0.6, f"playout stopped {reaction * 1000:.0f} ms after speech onset"
    # The long answer would have run for ~20 s; the caller heard only a part of it.
    reply_audio = sum(e - s for s, e in regions if s > onset + 0.3 and s < onset + 1.5)
    assert reply_audio < 1.2
    _, turns = _call_row(runtime)
    interrupted = [t for t in turns if t.interrupted and t.kind == "speech"]
    assert interrupted, [(t.kind, t.interrupted) for t in turns]
    turn = interrupted[0]
    assert turn.bot_text == LONG_ANSWER
    assert turn.spoken_text and LONG_ANSWER.startswith(turn.spoken_text[:40])
    assert len(turn.spoken_text) < len(LONG_ANSWER)
    assert responder.interrupted and responder.interrupted[0][1] == turn.spoken_text
    # The interruption itself became the caller's next turn.
    assert any("another question" in t.user_text.lower() for t in turns if t.index > turn.index)
    # The real call moved the metrics (one barge-in at least: the greeting may have been talked over too).
    assert BARGE_INS_TOTAL.value() >= barge_ins + 1
    assert TURN_STAGE_SECONDS.count(stage="stt") >= stt_turns + 2  # the question and the interruption
    for _ in range(100):  # counted when Eva's side of the call has ended (just after the caller hung up)
        if CALLS_TOTAL.value(direction="inbound", outcome="caller_hangup") > calls:
            break
        await asyncio.sleep(0.05)
    assert CALLS_TOTAL.value(direction="inbound", outcome="caller_hangup") == calls + 1
    # Counted under the agent that answered (its name), not under "-" (no agent).
    assert CALLS_TOTAL.value(agent="-") + BARGE_INS_TOTAL.value(agent="-") == unlabelled


async def test_dtmf_digits_reach_the_agent(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder) -> None:
    result = await place_call_async(caller.script(
        "100", Action("dtmf", at=2.0, digits="4"), Action("dtmf", at=2.3, digits="2"),
        Action("dtmf", at=2.6, digits="#"), timeout=6, record=False))
    # (the digits also interrupt the greeting: keys are an interruption like speech)
    assert result.connected, result
    assert any("DTMF: 42" in text for text in responder.heard), responder.heard
    _, turns = _call_row(runtime)
    assert any(t.kind == "dtmf" and "DTMF: 42" in t.user_text for t in turns)
    # The first key cut the greeting about 1.5 s in: its row holds what had played, not the whole greeting
    # (found with SIPp: a row claiming the whole greeting after 0.1 s of it).
    greeting = next(t for t in turns if t.kind == "greeting")
    assert greeting.interrupted
    assert greeting.bot_text.startswith(greeting.spoken_text), greeting.spoken_text
    assert len(greeting.spoken_text) < len(greeting.bot_text), greeting.spoken_text


def _call_tasks() -> list[str]:
    import asyncio

    prefixes = ("call-", "turn-", "llm-", "media-clock-")
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(prefixes) and not t.done()]


async def test_hangup_mid_answer_leaves_nothing_running(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path]) -> None:
    import asyncio

    assert runtime.voice is not None
    question = say("Tell me everything about your company.")
    responder.script = lambda text: LONG_ANSWER.split(" ")
    responder.delay = 0.05  # a slow LLM: the hang-up lands while generation and playout are both in flight
    before_ports = runtime.voice.ports.in_use
    asked_in_all = 0
    for hang_at in (7.1, 8.5, 10.0):
        asked_before, cancelled_before = len(responder.heard), responder.cancelled
        result = await place_call_async(caller.script(
            "100", Action("play", at=5.0, path=str(question)), Action("hangup", at=hang_at), timeout=14,
            record=False))
        assert result.connected and not result.remote_hangup, result
        for _ in range(50):  # teardown is asynchronous; give it a moment
            if not runtime.voice.calls and not _call_tasks():
                break
            await asyncio.sleep(0.1)
        assert _call_tasks() == []
        assert runtime.voice.calls == {}
        assert runtime.voice.ports.in_use == before_ports
        call, _ = _call_row(runtime)
        assert call.ended_at is not None
        assert call.outcome == "caller_hangup", call.outcome
        # Every reply that started was cut off by this hang-up (the slow LLM needs 4 s for the answer, more
        # than any hang-up leaves it), so each one must have been cancelled, not left to run on.
        asked = len(responder.heard) - asked_before
        assert responder.cancelled - cancelled_before == asked, (hang_at, asked, responder.cancelled)
        asked_in_all += asked
    assert asked_in_all >= 1  # at least one hang-up landed while the LLM was generating


async def test_two_simultaneous_calls_get_their_own_answers(
        runtime: EvaRuntime, caller: Caller, say: Callable[[str], Path], whisper: WhisperStt) -> None:
    import asyncio

    first = caller.script("100", Action("play", when_quiet=0.8, path=str(say("Tell me the weather in London."))),
                          Action("hangup", when_quiet=2.5), timeout=20)
    second = caller.script("100", Action("play", when_quiet=0.8, path=str(say("I want to order a large pizza."))),
                           Action("hangup", when_quiet=2.5), timeout=20)
    one, two = await asyncio.gather(place_call_async(first), place_call_async(second))
    assert one.connected and two.connected
    text_one = transcribe(whisper, load(one.record_path)).lower()
    text_two = transcribe(whisper, load(two.record_path)).lower()
    # Each caller hears Eva repeat their own words, never the other caller's.
    assert ("london" in text_one or "weather" in text_one) and "pizza" not in text_one, text_one
    assert "pizza" in text_two and "london" not in text_two and "weather" not in text_two, text_two


async def test_unknown_number_hears_an_apology(runtime: EvaRuntime, caller: Caller, whisper: WhisperStt) -> None:
    result = await place_call_async(caller.script("555123", timeout=8))
    assert result.connected and result.remote_hangup, result
    assert "not in service" in transcribe(whisper, load(result.record_path)).lower()
    call, _ = _call_row(runtime)
    assert call.outcome == "no_route" and call.agent_id is None


async def test_agent_failure_is_apologised_for_and_the_call_goes_on(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path],
        whisper: WhisperStt) -> None:
    calls = 0

    def flaky(text: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model crashed")
        return "Second time lucky."

    responder.script = flaky
    question = say("Are you there?")
    result = await place_call_async(caller.script(
        "100", Action("play", when_quiet=0.8, path=str(question)), Action("play", when_quiet=0.8, path=str(question)),
        Action("hangup", when_quiet=2.5), timeout=30))
    text = transcribe(whisper, load(result.record_path)).lower()
    assert "went wrong on my side" in text, text  # Whisper sometimes hears "something" as "thing"
    assert "second time lucky" in text, text


async def test_hang_up_tool_says_goodbye_then_ends_the_call(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path],
        whisper: WhisperStt) -> None:
    responder.script = lambda text: ["Thank you for calling. Goodbye!", ToolCall("hang_up")]
    result = await place_call_async(caller.script("100", Action("play", when_quiet=0.8, path=str(say("That is all."))),
                                                  timeout=15))
    assert result.connected and result.remote_hangup, result
    assert result.duration < 13  # Eva hung up; the caller did not have to
    heard = transcribe(whisper, load(result.record_path)).lower()
    assert "goodbye" in heard, heard  # the goodbye finished playing before the hang-up
    call, _ = _call_row(runtime)
    assert call.outcome == "completed" and call.ended_at is not None


# The transfer tests (allowlisted targets, refusals, a number Eva answers) are in test_call_security.py.


async def test_admin_call_control_lists_and_hangs_up_live_calls(runtime: EvaRuntime, caller: Caller) -> None:
    import asyncio

    from voicebot.callcontrol import AriCallControl
    from voicebot.errors import NotFound

    assert runtime.voice is not None
    control = AriCallControl(runtime.voice.ari)
    call = asyncio.ensure_future(place_call_async(caller.script("100", timeout=20, record=False)))
    live = []
    for _ in range(50):
        await asyncio.sleep(0.2)
        live = [c for c in await control.live_calls() if c.did == "100"]
        if live and live[0].state == "Up":
            break
    assert len(live) == 1 and live[0].channel.startswith("PJSIP/carrier-"), live
    assert not any(c.channel.startswith("UnicastRTP/") for c in await control.live_calls())
    await control.hangup(live[0].channel_id)
    result = await call
    assert result.connected and result.remote_hangup and result.duration < 15, result
    with pytest.raises(NotFound):
        await control.hangup(live[0].channel_id)


async def test_noise_that_transcribes_to_nothing_gets_asked_again(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, say: Callable[[str], Path],
        whisper: WhisperStt, tmp_path: Path) -> None:
    import numpy as np

    from voicebot.audio import Audio, write_wav

    # One second of line noise: the VAD calls it speech, Whisper finds no words in it.
    noise = tmp_path / "noise.wav"
    write_wav(noise, Audio((np.random.default_rng(7).standard_normal(16000) * 3000).astype(np.int16), 16000))
    result = await place_call_async(caller.script(
        "100", Action("play", when_quiet=0.8, path=str(noise)),
        Action("play", when_quiet=0.8, path=str(say("Can you hear me now?"))), Action("hangup", when_quiet=2.5),
        timeout=25))
    heard = transcribe(whisper, load(result.record_path)).lower()
    assert "didn't catch that" in heard or "did not catch that" in heard, heard
    assert "hear me now" in heard, heard  # the call went on: the next question was answered
    assert responder.heard == ["Can you hear me now?"]  # the noise never reached the agent


async def test_a_cough_pauses_the_bot_only_for_a_moment(
        runtime: EvaRuntime, caller: Caller, responder: ScriptedResponder, whisper: WhisperStt,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    from voicebot.audio import Audio, write_wav

    # 120 ms of noise during the greeting: long enough to pause playout, too short to be words.
    cough = tmp_path / "cough.wav"
    write_wav(cough, Audio((np.random.default_rng(3).standard_normal(1920) * 6000).astype(np.int16), 16000))
    caplog.set_level(logging.INFO, logger="voicebot.pipeline.session")
    # Hang up once the bot has been quiet for 6 s (not at a fixed 8 s): the pause lasts as long as STT takes to
    # find no words, which a machine loaded by parallel test workers stretched to 3.1 s, and a greeting cut off by
    # the caller's own timer is not one the bot failed to finish.
    result = await place_call_async(caller.script("100", Action("play", at=1.5, path=str(cough)),
                                                  Action("hangup", when_quiet=6.0), timeout=25))
    # Each stretch on its own: over the whole recording Whisper once stopped at the pause ("hello, this is e.").
    heard = transcribe_regions(whisper, load(result.record_path)).lower()
    assert "how can i help" in heard, heard  # the greeting went on to its end
    _, turns = _call_row(runtime)
    assert [t.kind for t in turns] == ["greeting"] and not turns[0].interrupted
    assert responder.heard == []
    # The cough was noticed: it paused the bot, STT found no words, and the bot carried on (a cough that went
    # unnoticed would pass every check above).
    resumed = [r.getMessage() for r in caplog.records if "paused the bot" in r.getMessage()]
    assert len(resumed) == 1, [r.getMessage() for r in caplog.records]
    # How long: STT's time, so load-bound (0.2 s on a quiet machine, 3.1 s seen under parallel workers), but a
    # moment: the 6 s of quiet the caller waits for would otherwise let any pause pass.
    paused_ms = float(resumed[0].split(" for ")[1].split(" ms")[0])
    assert 0 < paused_ms < 5000, resumed
