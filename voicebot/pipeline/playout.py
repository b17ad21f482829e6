"""Playout: the queue of bot audio frames the media clock pulls from, one 20 ms frame per tick.

It knows which sentence each frame belongs to, so after a barge-in we know exactly what the caller heard.
Pure and synchronous (the media clock calls ``pop`` on the event loop).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import numpy as np

from voicebot.audio import Pcm
from voicebot.pipeline.frames import Sentence


class Playout:
    def __init__(self, frame_samples: int) -> None:
        self.frame_samples = frame_samples
        self._frames: deque[tuple[Pcm, Sentence | None]] = deque()
        self.started: list[Sentence] = []
        """Sentences of the current turn whose first frame went out (the caller heard at least part)."""
        self._current: Sentence | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.on_first_frame: Callable[[float], None] | None = None
        self.frames_out = 0
        self.paused = False

    def enqueue(self, samples: Pcm, sentence: Sentence | None = None) -> None:
        step = self.frame_samples
        for start in range(0, len(samples), step):
            frame = samples[start:start + step]
            if len(frame) < step:
                frame = np.concatenate([frame, np.zeros(step - len(frame), dtype=np.int16)])
            self._frames.append((frame, sentence))
        if self._frames:
            self.idle.clear()

    def pop(self, now: float) -> Pcm | None:
        if self.paused:
            return None  # holding: the caller may be interrupting (see CallSession)
        if not self._frames:
            self.idle.set()
            return None
        frame, sentence = self._frames.popleft()
        if self.frames_out == 0 and self.on_first_frame is not None:
            self.on_first_frame(now)
        self.frames_out += 1
        if sentence is not None and sentence is not self._current:
            self._current = sentence
            self.started.append(sentence)
        if not self._frames:
            self.idle.set()
        return frame

    @property
    def busy(self) -> bool:
        return bool(self._frames)

    def clear(self) -> list[Sentence]:
        """Drop everything not yet played (barge-in); returns the sentences that were at least partly heard."""
        self._frames.clear()
        self.paused = False
        self.idle.set()
        return list(self.started)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def new_turn(self, on_first_frame: Callable[[float], None] | None) -> None:
        self.started = []
        self._current = None
        self.frames_out = 0
        self.on_first_frame = on_first_frame
