"""The RTP transport gives its port back however its close is interrupted.

A CI run ended with "unclosed transport <_SelectorDatagramTransport>": a call's shutdown was cancelled while the
media clock wound down, and the socket was left to the garbage collector (a port and a file descriptor lost until
it ran).
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voicebot.media.ports import PortAllocator
from voicebot.media.transport import RtpTransport


async def test_a_close_cancelled_while_the_clock_stops_still_releases_the_port() -> None:
    ports = PortAllocator(41000, 41009)
    transport = RtpTransport(ports)
    stuck = asyncio.Event()

    def on_frame(samples: np.ndarray, at: float) -> None:
        pass

    await transport.start(on_frame, lambda: None)
    assert ports.in_use == 1
    # The clock task ignores its first cancellation for a while, like a clock caught inside a slow callback.
    clock = transport._clock
    assert clock is not None

    async def slow_clock() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await stuck.wait()
            raise

    clock.cancel()
    transport._clock = asyncio.create_task(slow_clock())
    await asyncio.sleep(0)
    closing = asyncio.create_task(transport.close())
    await asyncio.sleep(0.05)
    closing.cancel()  # the shutdown itself is cancelled (the call's task was)
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert ports.in_use == 0, "the port was not given back"
    assert transport._dgram is None and transport._sock is None
    stuck.set()
    await asyncio.gather(transport._clock, return_exceptions=True)
    await transport.close()  # idempotent


async def test_close_releases_the_port() -> None:
    ports = PortAllocator(41010, 41019)
    transport = RtpTransport(ports)
    await transport.start(lambda samples, at: None, lambda: None)
    await transport.close()
    await transport.close()
    assert ports.in_use == 0


async def test_the_pacing_stats_tell_the_bots_audio_from_the_silence_between() -> None:
    """``voiced`` counts the frames of bot audio among those sent (the hostile-payload call test asks whether the
    bot was speaking, which the count of all frames, silence included, could not tell)."""
    import socket

    ports = PortAllocator(41020, 41029)
    transport = RtpTransport(ports)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    transport.set_remote("127.0.0.1", sink.getsockname()[1])
    audio = [np.full(transport.frame_samples, 1000, dtype=np.int16) for _ in range(5)]
    await transport.start(lambda samples, at: None, lambda: audio.pop() if audio else None)
    try:
        for _ in range(200):
            if transport.stats.sent >= 10:
                break
            await asyncio.sleep(0.02)
    finally:
        await transport.close()
        sink.close()
    assert transport.stats.sent >= 10 and transport.stats.voiced == 5, transport.stats
