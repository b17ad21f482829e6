"""Files are transcribed piece by piece, cut at quiet moments, so a live call's turn never waits for a whole file."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import numpy as np
import pytest

from voicebot.audio import Audio
from voicebot.stt.whisper import FILE_CHUNK_S, WhisperStt, chunk_bounds


def _speechlike(seconds: float, quiet_at: list[float], rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(3)
    samples = (rng.standard_normal(int(seconds * rate)) * 3000).astype(np.int16)
    for at in quiet_at:  # 300 ms of near-silence: where a speaker breathes
        samples[int(at * rate): int((at + 0.3) * rate)] //= 100
    return samples


def test_pieces_cover_the_file_and_are_cut_where_it_is_quiet() -> None:
    samples = _speechlike(50.0, [11.0, 23.5, 35.2])
    bounds = chunk_bounds(samples, 16000)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(samples)
    assert all(a[1] == b[0] for a, b in pairwise(bounds))  # contiguous, nothing lost
    cuts = [end / 16000 for _, end in bounds[:-1]]
    assert len(cuts) == 4  # the last 14.8 s are split once more, wherever it is quietest
    for cut, quiet in zip(cuts, [11.0, 23.5, 35.2], strict=False):
        assert quiet <= cut <= quiet + 0.3, (cut, quiet)
    assert all((end - start) / 16000 <= FILE_CHUNK_S + 1.0 for start, end in bounds)
    assert chunk_bounds(samples[:16000 * 5], 16000) == [(0, 16000 * 5)]  # a short file is one piece


@pytest.mark.models
async def test_a_call_turn_is_answered_while_a_long_file_is_still_being_transcribed() -> None:
    stt = WhisperStt()
    try:
        # Three pieces: enough to see a turn answered between them, and light on a machine running call tests.
        long_file = Audio(_speechlike(30.0, [11.5, 23.0]), 16000)
        transcribing = asyncio.create_task(stt.transcribe_file(long_file, "en"))
        while not stt.busy:  # noqa: ASYNC110 - a property of the model's worker, no event to wait on
            await asyncio.sleep(0.01)
        turn = Audio(_speechlike(1.5, []), 16000)
        await stt.transcribe(turn.samples, turn.rate, "en")
        assert not transcribing.done()  # the caller did not wait for the rest of the file
        result = await transcribing
        assert result.seconds == 30.0 and result.processing_s > 0
        assert stt.recent_rtf is not None
    finally:
        stt.close()
