"""Voice activity detection per 20 ms frame with webrtcvad (8/16/32/48 kHz, 16-bit mono)."""

from __future__ import annotations

import webrtcvad

from voicebot.audio import Pcm
from voicebot.errors import MediaError


class Vad:
    def __init__(self, aggressiveness: int = 2) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise MediaError("VAD aggressiveness must be 0..3", code="vad_config")
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, samples: Pcm, rate: int) -> bool:
        return bool(self._vad.is_speech(samples.astype("<i2").tobytes(), rate))
