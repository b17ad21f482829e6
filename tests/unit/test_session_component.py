"""Component tests of ``CallSession``: the call's state machine without sockets, Asterisk or models.

A :class:`ClockedTransport` stands in for the RTP transport: the test drives the session's media clock itself,
one 20 ms frame per tick on a virtual clock, and keeps what the session played back.  Voice activity detection is
the real webrtcvad.  The caller "speaks" harmonic tones (webrtcvad hears them as voice), one fundamental per
phrase, and :class:`ToneStt` transcribes a tone back to its phrase: a deterministic STT that still works on the
audio the session actually collected, so carried or clipped audio shows in the transcript.  Whisper, Piper and the
agent core are not what these tests are about (the call tests in ``tests/voice`` run them); what is proven here
is the session's own logic: DTMF timeouts, words carried into the next turn, the empty-reply fallback, failing
actions, failing turn writes and the early end of turn.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from voicebot.audio import Audio, Pcm
from voicebot.calls.store import TurnRecord
from voicebot.errors import AriError, TransferRefused
from voicebot.pipeline.dtmf import dtmf_turn_text
from voicebot.pipeline.responder import CallContext, ReplyDone, ReplyEvent, TextDelta, ToolCall
from voicebot.pipeline.session import CallSession, SessionConfig

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
FRAME_S = 0.02
PHRASES = {200: "I want to", 300: "book a table", 400: "I need a taxi.", 500: "hello there"}
"""Tone fundamental (Hz) → the words ToneStt hears for it."""

_rng = np.random.default_rng(7)


def tone(freq: int, ms: int) -> list[Pcm]:
    """``ms`` of a voiced sound at fundamental ``freq`` (five harmonics), as 20 ms frames."""
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6))
    samples = (wave / np.abs(wave).max() * 10000).astype(np.int16)
    return [samples[i:i + FRAME] for i in range(0, n, FRAME)]


def quiet(ms: int) -> list[Pcm]:
    """Line noise that webrtcvad reads as silence."""
    return [_rng.normal(0, 2, FRAME).astype(np.int16) for _ in range(ms // 20)]


class ClockedTransport:
    """The session's media transport, clocked by the test: ``tick`` is one 20 ms frame in and one out."""

    rate = RATE
    frame_samples = FRAME

    def __init__(self) -> None:
        self._on_frame: Callable[[Pcm, float], None] | None = None
        self._next_frame: Callable[[], Pcm | None] | None = None
        self.t = 0.0
        self.played: list[bool] = []
        """One entry per tick: did the session send bot audio in that frame."""
        self.closed = False
        self.started = asyncio.Event()

    async def start(self, on_frame: Callable[[Pcm, float], None], next_frame: Callable[[], Pcm | None]) -> None:
        self._on_frame, self._next_frame = on_frame, next_frame
        self.t = asyncio.get_running_loop().time()
        self.started.set()

    async def close(self) -> None:
        self.closed = True

    async def tick(self, frame: Pcm) -> None:
        assert self._on_frame is not None and self._next_frame is not None
        self.t += FRAME_S
        self._on_frame(frame, self.t)
        self.played.append(self._next_frame() is not None)
        # Let what the frame set off (STT, the turn task, TTS) run before the next frame: all doubles answer
        # without real I/O, so a few passes of the loop settle them.
        for _ in range(8):
            await asyncio.sleep(0)

    async def feed(self, frames: list[Pcm]) -> None:
        for frame in frames:
            await self.tick(frame)

    async def until(self, done: Callable[[], bool], *, max_ms: int = 20000) -> int:
        """Tick silence until ``done()``; returns the number of frames it took (fails past ``max_ms``)."""
        for n in range(max_ms // 20):
            if done():
                return n
            await self.tick(quiet(20)[0])
        raise AssertionError(f"not reached within {max_ms} ms of call audio")


@dataclass
class Transcript:
    text: str


class ToneStt:
    """Hears each voiced 20 ms frame's fundamental and writes down the phrase it stands for."""

    def __init__(self) -> None:
        self.calls = 0

    async def transcribe(self, samples: Pcm, rate: int) -> Transcript:
        self.calls += 1
        words: list[str] = []
        for i in range(0, len(samples) - FRAME + 1, FRAME):
            frame = samples[i:i + FRAME].astype(np.float64)
            if np.sqrt(np.mean(frame ** 2)) < 500:
                continue
            peak = int(np.argmax(np.abs(np.fft.rfft(frame))[1:]) + 1) * rate // FRAME
            phrase = PHRASES.get(peak)
            if phrase and (not words or words[-1] != phrase):
                words.append(phrase)
        return Transcript(" ".join(words))


class ListTts:
    """Speaks every text as 100 ms of audio per word, and writes down what it was asked to say."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.deadlines: list[tuple[float | None, float]] = []
        """(deadline, the loop's time when asked) of every sentence."""

    async def speak(self, text: str, rate: int, voice: str, deadline: float | None = None) -> Audio:
        self.said.append(text)
        self.deadlines.append((deadline, asyncio.get_running_loop().time()))
        return Audio(np.full(rate // 10 * max(1, len(text.split())), 1000, dtype=np.int16), rate)


@dataclass
class Reply:
    events: list[ReplyEvent]
    hold: asyncio.Event | None = None
    """The reply waits for this before its first event (an LLM still thinking)."""


@dataclass
class ScriptedAgent:
    """The agent's side of the call, scripted per turn; writes down what the caller's turns read as."""

    replies: list[Reply] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    interrupted: list[tuple[int | None, str]] = field(default_factory=list)

    async def respond(self, ctx: CallContext, text: str) -> AsyncIterator[ReplyEvent]:
        self.asked.append(text)
        reply = self.replies.pop(0) if self.replies else Reply([TextDelta("Okay."), ReplyDone("Okay.")])
        if reply.hold is not None:
            await reply.hold.wait()
        for event in reply.events:
            yield event

    async def mark_interrupted(self, ctx: CallContext, message_id: int | None, spoken_text: str) -> None:
        self.interrupted.append((message_id, spoken_text))


@dataclass
class Control:
    """The telephony side: records what the session asked, and fails when told to."""

    fail: Exception | None = None
    transfers: list[str] = field(default_factory=list)
    hangups: int = 0

    async def transfer_destination(self, target: str) -> str:
        if target != "sales":
            raise TransferRefused("not a destination", code="transfer_refused", options=("sales",))
        return "800"

    async def transfer(self, target: str) -> None:
        self.transfers.append(target)
        if self.fail is not None:
            raise self.fail

    async def hangup(self) -> None:
        self.hangups += 1
        if self.fail is not None:
            raise self.fail

    async def continue_dialplan(self, result: str, variables: dict[str, str]) -> None:
        return None


@dataclass
class Turns:
    """The persist callback: keeps the turn rows, or fails for the turn indexes in ``fail``."""

    rows: list[TurnRecord] = field(default_factory=list)
    fail: set[int] = field(default_factory=set)
    attempts: list[int] = field(default_factory=list)

    async def __call__(self, record: TurnRecord) -> None:
        self.attempts.append(record.index)
        if record.index in self.fail:
            raise OSError("database is locked")
        self.rows.append(record)


CTX = CallContext(call_id=1, channel_id="chan-1", caller="+15551230001", did="100", agent_id=1, agent_name="demo",
                  greeting="", fallback="Sorry, I have no answer to that.")


class Call:
    """One CallSession on a ClockedTransport, with its task and the doubles around it."""

    def __init__(self, *, agent: ScriptedAgent | None = None, control: Control | None = None,
                 turns: Turns | None = None, greeting: str = "", **config: Any) -> None:
        self.transport = ClockedTransport()
        self.stt = ToneStt()
        self.tts = ListTts()
        self.agent = agent or ScriptedAgent()
        self.control = control or Control()
        self.turns = turns or Turns()
        ctx = CallContext(**{**CTX.__dict__, "greeting": greeting})
        self.session = CallSession(ctx, self.transport, self.stt, self.tts, self.agent, self.control, self.turns,
                                   SessionConfig(**config))
        self.task: asyncio.Task[str] | None = None

    async def __aenter__(self) -> Call:
        self.task = asyncio.create_task(self.session.run())
        await asyncio.wait_for(self.transport.started.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.session.end("caller_hangup")
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), 10)

    @property
    def over(self) -> bool:
        return self.task is not None and self.task.done()


@pytest.fixture
async def loop_errors() -> list[dict[str, Any]]:
    """Errors the event loop's exception handler saw (a task that died with nobody awaiting it)."""
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


async def test_dtmf_keys_without_terminator_become_a_turn_after_the_inter_digit_timeout() -> None:
    async with Call(dtmf_timeout_s=0.05, dtmf_min_interval_s=0.0) as call:
        for key in "42":
            call.session.dtmf(key)
            await call.transport.tick(quiet(20)[0])
        assert call.agent.asked == []  # no terminator: the collector waits for more keys
        # The timeout runs on the event loop's clock: tick (and let real time pass) until the turn starts.
        for _ in range(500):
            if call.agent.asked:
                break
            await call.transport.tick(quiet(20)[0])
            await asyncio.sleep(0.002)
        assert call.agent.asked == [dtmf_turn_text("42")]
        await call.transport.until(lambda: len(call.turns.rows) == 1)
    row = call.turns.rows[0]
    assert (row.kind, row.user_text, row.spoken_text) == ("dtmf", dtmf_turn_text("42"), "Okay.")


async def test_caller_who_keeps_talking_before_the_bot_speaks_has_their_words_carried_into_the_next_turn() -> None:
    thinking = asyncio.Event()
    agent = ScriptedAgent(replies=[Reply([TextDelta("Too early."), ReplyDone("Too early.")], hold=thinking)])
    async with Call(agent=agent) as call:
        await call.transport.feed(tone(200, 600) + quiet(500))  # "I want to", then a pause that ends the turn
        await call.transport.until(lambda: len(call.agent.asked) == 1)
        assert call.agent.asked == ["I want to"]
        # The agent is still thinking (nothing played) when the caller goes on.
        await call.transport.feed(tone(300, 600) + quiet(500))
        await call.transport.until(lambda: len(call.agent.asked) == 2)
        thinking.set()
        await call.transport.until(lambda: len(call.turns.rows) == 2)
    assert call.agent.asked[1] == "I want to book a table"
    first, second = sorted(call.turns.rows, key=lambda r: r.index)
    assert first.interrupted and first.spoken_text == ""
    assert second.user_text == "I want to book a table" and not second.interrupted
    assert "Too early." not in call.tts.said


async def test_a_complete_sentence_ends_the_turn_before_the_end_of_turn_silence() -> None:
    frames_to_reply: dict[bool, int] = {}
    for early in (True, False):
        async with Call(early_end_of_turn=early) as call:
            await call.transport.feed(tone(400, 600))  # "I need a taxi." (ends in a full stop)
            frames_to_reply[early] = await call.transport.until(lambda c=call: bool(c.agent.asked))  # type: ignore[misc]
            assert call.agent.asked == ["I need a taxi."]
    end_silence_frames = SessionConfig().turn.end_silence_ms // 20
    # Early: the speculative transcript made at the pause (120 ms) ends the turn; otherwise the full 400 ms.
    assert frames_to_reply[True] < end_silence_frames <= frames_to_reply[False]


async def test_an_unfinished_sentence_waits_for_the_end_of_turn_silence() -> None:
    async with Call(early_end_of_turn=True) as call:
        await call.transport.feed(tone(200, 600))  # "I want to": no full stop, the caller may go on
        frames = await call.transport.until(lambda: bool(call.agent.asked))
    assert frames >= SessionConfig().turn.end_silence_ms // 20


async def test_an_empty_reply_is_answered_with_the_agents_fallback() -> None:
    agent = ScriptedAgent(replies=[Reply([ReplyDone("")])])
    async with Call(agent=agent) as call:
        await call.transport.feed(tone(500, 600) + quiet(500))
        await call.transport.until(lambda: bool(call.turns.rows))
    assert call.tts.said == [CTX.fallback]
    assert (call.turns.rows[0].bot_text, call.turns.rows[0].spoken_text) == (CTX.fallback, CTX.fallback)
    assert any(call.transport.played)


@pytest.mark.parametrize("tool", [ToolCall("transfer_call", {"target": "sales"}), ToolCall("hang_up")],
                         ids=["transfer", "hang_up"])
async def test_a_failing_call_action_ends_the_call_as_failed(tool: ToolCall) -> None:
    control = Control(fail=AriError("ARI is unreachable", code="ari_unreachable"))
    agent = ScriptedAgent(replies=[Reply([TextDelta("One moment."), tool, ReplyDone("One moment.")])])
    call = Call(agent=agent, control=control)
    async with call:
        await call.transport.feed(tone(500, 600) + quiet(500))
        # Nobody hangs up: the session itself must end the call when the action fails.
        await call.transport.until(lambda: call.over)
    assert call.task is not None and call.task.result() == "failed"
    assert call.session.outcome == "failed"
    assert (control.transfers, control.hangups) == ((["800"], 0) if tool.name == "transfer_call" else ([], 1))
    assert call.transport.closed
    assert call.tts.said == ["One moment."]  # the reply was spoken before the action


async def test_a_refused_transfer_is_apologised_for_and_the_call_goes_on() -> None:
    control = Control()
    agent = ScriptedAgent(replies=[Reply([ToolCall("transfer_call", {"target": "the CEO"}), ReplyDone("")])])
    async with Call(agent=agent, control=control) as call:
        await call.transport.feed(tone(500, 600) + quiet(500))
        await call.transport.until(lambda: bool(call.turns.rows))
        assert not call.over
    assert control.transfers == []
    assert call.session.outcome == "completed"
    assert any("can't transfer" in said and "sales" in said for said in call.tts.said)


async def test_a_failing_turn_write_does_not_take_the_call_down(loop_errors: list[dict[str, Any]]) -> None:
    turns = Turns(fail={0, 1})
    agent = ScriptedAgent(replies=[Reply([TextDelta("Noted."), ReplyDone("Noted.")]),
                                   Reply([TextDelta("Goodbye."), ToolCall("hang_up"), ReplyDone("Goodbye.")])])
    call = Call(agent=agent, turns=turns, greeting="Hello, this is Eva.")
    async with call:
        await call.transport.until(lambda: 0 in turns.attempts)  # the greeting's row could not be written
        await call.transport.feed(tone(500, 600) + quiet(500))
        await call.transport.until(lambda: 1 in turns.attempts)  # nor this turn's
        await call.transport.feed(tone(300, 600) + quiet(500))
        # The call went on: the next turn was answered, written, and its hang-up ran.
        await call.transport.until(lambda: call.over)
    gc.collect()
    assert call.tts.said == ["Hello, this is Eva.", "Noted.", "Goodbye."]
    assert [r.index for r in turns.rows] == [2]
    assert call.control.hangups == 1 and call.session.outcome == "completed"
    assert loop_errors == []


async def test_the_llm_stage_is_the_models_first_token_even_when_text_comes_later() -> None:
    """The grounding guard holds a sentence until its end: the turn row's LLM stage is the model's first token
    (reported with the reply's end), not the moment the held sentence reached the call."""

    class HeldSentence(ScriptedAgent):
        async def respond(self, ctx: CallContext, text: str) -> AsyncIterator[ReplyEvent]:
            self.asked.append(text)
            first_token = asyncio.get_running_loop().time()
            await asyncio.sleep(0.3)  # the rest of the sentence being decoded, held back
            yield TextDelta("We open at nine.")
            yield ReplyDone("We open at nine.", first_token_at=first_token)

    async with Call(agent=HeldSentence()) as call:
        await call.transport.feed(tone(400, 600))
        await call.transport.until(lambda: bool(call.agent.asked))
        await asyncio.sleep(0.4)  # the call's clock is the loop's: let the held sentence come
        await call.transport.until(lambda: bool(call.turns.rows))
    row = call.turns.rows[0]
    stages = row.timings_ms
    assert stages["first_sentence_ready"] - stages["llm_first_token"] >= 250, stages


async def test_each_sentence_is_synthesized_with_the_time_its_audio_will_be_needed() -> None:
    """The speaker orders synthesis by playout deadline across calls: a reply's second sentence is needed only
    when its first has played (7 words: 0.7 s of ListTts audio), its first one now."""
    reply = Reply([TextDelta("We open at nine in the morning. "), TextDelta("We close at six."),
                   ReplyDone("We open at nine in the morning. We close at six.")])
    async with Call(agent=ScriptedAgent([reply])) as call:
        await call.transport.feed(tone(400, 600))
        await call.transport.until(lambda: len(call.tts.said) >= 2)
    (first, first_asked), (second, second_asked) = call.tts.deadlines[:2]
    assert first is not None and second is not None
    assert first == pytest.approx(first_asked, abs=0.01)  # nothing queued: needed now
    # Needed once the first sentence's 0.7 s have played (less the frames already out when it was asked).
    ahead = second - second_asked
    assert 0.7 - 0.1 <= ahead <= 0.7, (ahead, call.tts.deadlines)
