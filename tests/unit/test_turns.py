"""The turn detector state machine, fed exact frame sequences (no audio, no clock)."""

from __future__ import annotations

import numpy as np

from voicebot.pipeline.frames import SpeechStarted, UserUtterance
from voicebot.pipeline.turns import State, TurnConfig, TurnDetector

RATE = 8000
FRAME = 160


def _frame(value: int) -> np.ndarray:
    return np.full(FRAME, value, dtype=np.int16)


def run(detector: TurnDetector, pattern: str, start: float = 0.0) -> list[tuple[int, object]]:
    """Feed frames: 'x' voiced, '.' silent.  Returns (frame index, event) pairs; frame i carries value i."""
    events: list[tuple[int, object]] = []
    for i, ch in enumerate(pattern):
        t = start + (i + 1) * 0.02
        for event in detector.feed(_frame(i), RATE, ch == "x", t):
            events.append((i, event))
    return events


def config(**kw: int) -> TurnConfig:
    base = {"min_speech_ms": 60, "end_silence_ms": 100, "max_utterance_ms": 1000, "preroll_ms": 40,
            "min_utterance_ms": 60}
    base.update(kw)
    return TurnConfig(**base)


def test_speech_start_after_min_speech_and_end_after_silence() -> None:
    d = TurnDetector(config())
    events = run(d, "...xxxxxx.....")
    assert [(i, type(e).__name__) for i, e in events] == [(5, "SpeechStarted"), (13, "UserUtterance")]
    started = events[0][1]
    assert isinstance(started, SpeechStarted)
    assert abs(started.onset - 0.06) < 1e-9  # first voiced frame (index 3) began at 60 ms
    utterance = events[1][1]
    assert isinstance(utterance, UserUtterance)
    # pre-roll (frames 1, 2) + speech (3..8) + up to 5 trailing silent frames (9..13)
    values = utterance.samples[::FRAME].tolist()
    assert values == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert abs(utterance.ended - 0.18) < 1e-9  # last voiced frame ended at 180 ms
    assert d.state is State.IDLE


def test_a_click_is_not_speech() -> None:
    d = TurnDetector(config())
    assert run(d, "..xx.....x.......") == []
    assert d.state is State.IDLE


def test_short_pauses_do_not_end_the_turn() -> None:
    d = TurnDetector(config(end_silence_ms=100))
    events = run(d, "xxxx..xxxx....xx.....")
    kinds = [type(e).__name__ for _, e in events]
    assert kinds == ["SpeechStarted", "UserUtterance"]
    assert events[1][0] == 20


def test_max_utterance_length_cuts_a_monologue() -> None:
    d = TurnDetector(config(max_utterance_ms=200))
    events = run(d, "x" * 25)
    utterances = [e for _, e in events if isinstance(e, UserUtterance)]
    assert len(utterances) == 2 and utterances[0].truncated
    assert len(utterances[0].samples) == 10 * FRAME


def test_too_short_utterance_comes_out_empty() -> None:
    d = TurnDetector(config(min_speech_ms=40, min_utterance_ms=200))
    events = run(d, "xxx......")
    utterance = events[-1][1]
    assert isinstance(utterance, UserUtterance) and len(utterance.samples) == 0


def test_pause_invites_speculative_stt_once_per_pause() -> None:
    from voicebot.pipeline.frames import SpeechPaused

    d = TurnDetector(config(end_silence_ms=200, pause_ms=80, min_utterance_ms=60))
    events = run(d, "xxxxx....xxxxx..........")
    kinds = [(i, type(e).__name__) for i, e in events]
    assert kinds == [(2, "SpeechStarted"), (8, "SpeechPaused"), (17, "SpeechPaused"), (23, "UserUtterance")]
    first_pause = events[1][1]
    assert isinstance(first_pause, SpeechPaused)
    assert abs(first_pause.last_voiced - 0.10) < 1e-9
    final = events[-1][1]
    assert isinstance(final, UserUtterance)
    second_pause = events[2][1]
    assert isinstance(second_pause, SpeechPaused)
    # The last pause saw the whole utterance: the session may reuse its transcript.
    assert second_pause.last_voiced == final.ended


def test_end_turn_early_only_in_a_pause() -> None:
    d = TurnDetector(config(end_silence_ms=400, pause_ms=80))
    run(d, "xxxxxx")
    assert d.end_turn(1.0) is None  # still speaking: nothing to end
    run(d, "...", start=0.12)
    utterance = d.end_turn(1.0)
    assert utterance is not None and len(utterance.samples) > 0 and utterance.ended == d.last_voiced
    assert d.state is State.IDLE
    assert d.end_turn(1.1) is None
