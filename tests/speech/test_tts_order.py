"""Piper serves the earliest playout deadline first: with several calls talking, a caller's first sentence is not
synthesized after other calls' later sentences (which have seconds of audio queued in front of them)."""

from __future__ import annotations

import asyncio

import pytest

from voicebot.tts.piper import PiperSpeaker


@pytest.mark.models
async def test_a_sentence_needed_now_is_synthesized_before_ones_needed_later() -> None:
    tts = PiperSpeaker()
    finished: list[str] = []

    async def say(name: str, text: str, deadline: float | None) -> None:
        await tts.speak(text, 8000, "", deadline)
        finished.append(name)

    try:
        await tts.speak("Ready.", 8000)
        now = asyncio.get_running_loop().time()  # the clock deadlines are given in
        busy = asyncio.create_task(say("busy", "This sentence keeps the voice busy for a little while.", None))
        await asyncio.sleep(0.02)
        later = [asyncio.create_task(say(f"call A sentence {i}", "And we close at six in the evening.", now + 3 + i))
                 for i in range(2)]
        await asyncio.sleep(0.02)
        first = asyncio.create_task(say("call B first sentence", "We open at nine.", None))
        await asyncio.gather(busy, *later, first)
        assert finished == ["busy", "call B first sentence", "call A sentence 0", "call A sentence 1"]

        tts.deadline_first = False  # first come, first served: what the ordering replaced
        finished.clear()
        busy = asyncio.create_task(say("busy", "This sentence keeps the voice busy for a little while.", None))
        await asyncio.sleep(0.02)
        later = [asyncio.create_task(say(f"call A sentence {i}", "And we close at six in the evening.",
                                         asyncio.get_running_loop().time() + 3 + i)) for i in range(2)]
        await asyncio.sleep(0.02)
        first = asyncio.create_task(say("call B first sentence", "We open at nine.", None))
        await asyncio.gather(busy, *later, first)
        assert finished == ["busy", "call A sentence 0", "call A sentence 1", "call B first sentence"]
    finally:
        tts.close()
