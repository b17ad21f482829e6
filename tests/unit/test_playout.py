"""Playout: frames out one at a time, exact record of what was heard when cleared (a sentence cut short counts
only for the share of it that was played)."""

from __future__ import annotations

import numpy as np
import pytest

from voicebot.pipeline.frames import Sentence
from voicebot.pipeline.playout import Playout


def test_frames_are_padded_and_sentences_tracked() -> None:
    p = Playout(frame_samples=4)
    first_out: list[float] = []
    p.new_turn(first_out.append)
    s1, s2 = Sentence("one", 0, 0.0), Sentence("two", 1, 0.0)
    p.enqueue(np.arange(6, dtype=np.int16), s1)
    p.enqueue(np.arange(4, dtype=np.int16), s2)
    assert not p.idle.is_set()
    frame = p.pop(1.0)
    assert frame is not None and frame.tolist() == [0, 1, 2, 3]
    assert first_out == [1.0]
    frame = p.pop(1.02)
    assert frame is not None and frame.tolist() == [4, 5, 0, 0]
    assert [s.text for s in p.started] == ["one"]
    heard = p.clear()
    assert heard == ["one"]
    assert p.pop(1.04) is None and p.idle.is_set()


def test_new_turn_resets_and_idle_when_drained() -> None:
    p = Playout(frame_samples=2)
    p.enqueue(np.zeros(2, dtype=np.int16), Sentence("a", 0, 0.0))
    assert p.pop(0.0) is not None
    assert p.idle.is_set()
    p.new_turn(None)
    assert p.started == [] and p.frames_out == 0


def test_pause_holds_audio_and_resume_continues_where_it_stopped() -> None:
    p = Playout(frame_samples=2)
    p.enqueue(np.arange(6, dtype=np.int16), Sentence("a", 0, 0.0))
    first = p.pop(0.0)
    assert first is not None and first.tolist() == [0, 1]
    p.pause()
    assert p.pop(0.02) is None and p.busy and not p.idle.is_set()
    p.resume()
    nxt = p.pop(0.04)
    assert nxt is not None and nxt.tolist() == [2, 3]
    p.pause()
    p.clear()
    assert not p.paused and p.idle.is_set()


def _seconds(p: Playout, seconds: float) -> np.ndarray:
    return np.ones(int(seconds * 50) * p.frame_samples, dtype=np.int16)


GREETING = ("Hello, this is Eva, the virtual assistant of Sunny Side Bike Shop. "
            "How can I help you today?")


def test_a_greeting_cut_after_a_tenth_of_a_second_counts_as_not_heard() -> None:
    # Found with SIPp: the caller spoke at once, and the row claimed the whole greeting was spoken.
    p = Playout(frame_samples=160)
    p.new_turn(None)
    p.enqueue(_seconds(p, 4.0), Sentence(GREETING, 0, 0.0))  # 200 frames
    for i in range(5):  # 0.1 s reached the caller
        assert p.pop(i * 0.02) is not None
    assert p.clear() == []
    assert p.started  # it did start: the caller heard a sound, but not one whole word of it


def test_the_sentence_playing_at_the_interruption_counts_for_its_played_share() -> None:
    p = Playout(frame_samples=160)
    p.new_turn(None)
    first = Sentence("We are open from nine.", 0, 0.0)
    second = Sentence("On Saturday we open at ten and close at four.", 1, 0.0)  # 10 words
    p.enqueue(_seconds(p, 1.0), first)  # 50 frames
    p.enqueue(_seconds(p, 2.0), second)  # 100 frames
    for i in range(50 + 45):  # all of the first, 45 % of the second
        assert p.pop(i * 0.02) is not None
    assert p.heard() == ["We are open from nine.", "On Saturday we open"]
    assert p.clear() == ["We are open from nine.", "On Saturday we open"]
    assert p.heard() == ["We are open from nine.", "On Saturday we open"]  # cleared frames were not heard


def test_a_fully_played_turn_is_heard_whole_and_equal_sentences_are_kept_apart() -> None:
    p = Playout(frame_samples=160)
    p.new_turn(None)
    once, again = Sentence("Sorry?", 0, 0.0), Sentence("Sorry?", 0, 0.0)  # equal values, two sentences
    p.enqueue(_seconds(p, 0.2), once)
    p.enqueue(_seconds(p, 0.2), again)
    for i in range(10 + 5):
        assert p.pop(i * 0.02) is not None
    assert p.heard() == ["Sorry?"]  # the second one is only half out: no whole word of it yet
    while p.pop(1.0) is not None:
        pass
    assert p.heard() == ["Sorry?", "Sorry?"]
    p.new_turn(None)
    assert p.heard() == [] and p.started == []


def test_queued_seconds_is_the_audio_still_to_play() -> None:
    p = Playout(frame_samples=160)
    assert p.queued_s == 0.0
    p.enqueue(np.zeros(160 * 10, dtype=np.int16))
    p.pop(0.0)
    assert p.queued_s == pytest.approx(9 * 0.020)
