"""Playout: frames out one at a time, exact record of what was heard when cleared."""

from __future__ import annotations

import numpy as np

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
    assert [s.text for s in heard] == ["one"]
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
