"""Barge-in records what the caller actually heard, not what was queued (a component test of ``CallSession``).

Found by calling Eva from SIPp: the caller spoke over the greeting at once, and the greeting's turn row said
``interrupted`` with the *whole* greeting as ``spoken_text`` after about 0.1 s of it had played.  Here the
session's media clock is driven frame by frame on a virtual clock, so the test knows exactly how many frames of
the greeting went out before the caller's voice stopped it.  VAD is the real webrtcvad (a harmonic tone is
voice to it); the TTS speaks every word as 100 ms of audio, so the played share maps to words exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from voicebot.audio import Audio, Pcm
from voicebot.calls.store import TurnRecord
from voicebot.pipeline.responder import CallContext, ReplyDone, ReplyEvent, TextDelta
from voicebot.pipeline.session import CallSession

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
GREETING = ("Hello, this is Eva, the virtual assistant of the Sunny Side Bike Shop, and I can tell you our "
            "opening hours, our prices and our address, or put you through to a person.")
WORD_FRAMES = 5  # 100 ms of audio per word


def voice(ms: int) -> list[Pcm]:
    t = np.arange(RATE * ms // 1000) / RATE
    wave = sum(np.sin(2 * np.pi * 200 * k * t) / k for k in range(1, 6))
    samples = (wave / np.abs(wave).max() * 10000).astype(np.int16)
    return [samples[i:i + FRAME] for i in range(0, len(samples), FRAME)]


SILENCE = np.zeros(FRAME, dtype=np.int16)


class Transport:
    rate = RATE
    frame_samples = FRAME

    def __init__(self) -> None:
        self.on_frame: Callable[[Pcm, float], None] | None = None
        self.next_frame: Callable[[], Pcm | None] | None = None
        self.t = 0.0
        self.bot_frames = 0
        self.started = asyncio.Event()

    async def start(self, on_frame: Callable[[Pcm, float], None], next_frame: Callable[[], Pcm | None]) -> None:
        self.on_frame, self.next_frame = on_frame, next_frame
        self.t = asyncio.get_running_loop().time()
        self.started.set()

    async def close(self) -> None:
        return None

    async def tick(self, frame: Pcm) -> None:
        assert self.on_frame is not None and self.next_frame is not None
        self.t += 0.02
        self.on_frame(frame, self.t)
        if self.next_frame() is not None:
            self.bot_frames += 1
        for _ in range(8):  # let what the frame set off (the turn task, TTS) run
            await asyncio.sleep(0)


class WordTts:
    async def speak(self, text: str, rate: int, voice: str, deadline: float | None = None) -> Audio:
        return Audio(np.full(FRAME * WORD_FRAMES * len(text.split()), 1000, dtype=np.int16), rate)


class Stt:
    async def transcribe(self, samples: Pcm, rate: int) -> Any:
        class Result:
            text = "Wait."
        return Result()


class Agent:
    def __init__(self) -> None:
        self.interrupted: list[tuple[int | None, str]] = []

    async def respond(self, ctx: CallContext, text: str) -> AsyncIterator[ReplyEvent]:
        yield TextDelta("Sure.")
        yield ReplyDone("Sure.")

    async def mark_interrupted(self, ctx: CallContext, message_id: int | None, spoken_text: str) -> None:
        self.interrupted.append((message_id, spoken_text))


class Control:
    async def transfer_destination(self, target: str) -> str:
        return target

    async def transfer(self, target: str) -> None:
        return None

    async def hangup(self) -> None:
        return None

    async def continue_dialplan(self, result: str, variables: dict[str, str]) -> None:
        return None


async def _greeting_row(voice_after_frames: int) -> tuple[TurnRecord, int]:
    """Let ``voice_after_frames`` frames of the greeting play, then the caller talks over it; returns the greeting's
    turn row and how many of its frames went out."""
    rows: list[TurnRecord] = []

    async def persist(record: TurnRecord) -> None:
        rows.append(record)

    ctx = CallContext(call_id=1, channel_id="chan-1", caller="+15551230001", did="100", agent_id=1,
                      agent_name="demo", greeting=GREETING, fallback="Sorry.")
    transport = Transport()
    session = CallSession(ctx, transport, Stt(), WordTts(), Agent(), Control(), persist)
    task = asyncio.create_task(session.run())
    await asyncio.wait_for(transport.started.wait(), 5)
    while transport.bot_frames < voice_after_frames:
        await transport.tick(SILENCE)
    heard_frames = 0
    for frame in voice(600):
        await transport.tick(frame)
        if not session.playout.paused and session.playout.busy:
            heard_frames = transport.bot_frames
    for _ in range(50):
        if any(r.kind == "greeting" for r in rows):
            break
        await transport.tick(SILENCE)
    session.end("caller_hangup")
    await asyncio.wait_for(task, 10)
    greeting = [r for r in rows if r.kind == "greeting"]
    assert greeting, rows
    return greeting[0], max(heard_frames, voice_after_frames)


async def test_caller_speaking_over_the_greeting_at_once_leaves_almost_nothing_spoken() -> None:
    row, played = await _greeting_row(voice_after_frames=5)  # 0.1 s of a 3 s greeting
    words = GREETING.split()
    assert row.interrupted
    assert played < 3 * WORD_FRAMES  # the bot went quiet while the caller spoke (a pause, then the barge-in)
    # Only the words whose audio went out count: at most ``played`` frames' worth of the greeting.
    assert row.spoken_text.split() == words[:len(row.spoken_text.split())]
    assert len(row.spoken_text.split()) <= played // WORD_FRAMES + 1
    assert len(row.spoken_text) < len(GREETING) // 4


async def test_interrupting_midway_keeps_the_words_played_so_far() -> None:
    row, played = await _greeting_row(voice_after_frames=80)  # 16 of the greeting's words went out
    words = GREETING.split()
    spoken = row.spoken_text.split()
    assert row.interrupted
    assert spoken == words[:len(spoken)]
    assert 80 // WORD_FRAMES <= len(spoken) <= played // WORD_FRAMES + 1 < len(words)
