"""ExternalMedia RTP against the real Asterisk 22: what works and what Asterisk drops.

Extension 601 sends the call to the ARI app ``<app>-probe``; this test is that app.  It bridges the caller with
an ExternalMedia channel, sends a 440 Hz tone paced by deadline from the socket that receives, and checks the
caller's recording.
"""

from __future__ import annotations

import asyncio
import socket
import uuid

import numpy as np
import pytest

from tests.conftest import Caller
from voicebot.ari import AriClient, AriEvent
from voicebot.audio import read_wav, voiced_seconds
from voicebot.config import Settings
from voicebot.media import rtp
from voicebot.sipcaller import place_call_async

pytestmark = pytest.mark.asyncio  # the asterisk mark is derived (tests/conftest.py)


async def _tone_call(settings: Settings, caller: Caller, media_format: str) -> tuple[float, int]:
    fmt = rtp.payload_format(media_format)
    t = np.arange(fmt.rate * 3) / fmt.rate
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    ari = AriClient(settings.ari_url, settings.ari_user, settings.ari_password, f"{settings.ari_app}-probe")
    received: list[rtp.RtpPacket] = []
    finished = asyncio.Event()

    async def run(channel_id: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        media_id = f"probe-{uuid.uuid4().hex[:8]}"
        bridge_id = f"probe-{uuid.uuid4().hex[:8]}"
        try:
            await ari.answer(channel_id)
            await ari.create_bridge(bridge_id)
            await ari.add_to_bridge(bridge_id, [channel_id])
            reply = await ari.external_media(media_id, f"127.0.0.1:{sock.getsockname()[1]}", media_format)
            variables = reply["channelvars"]
            dest = (variables["UNICASTRTP_LOCAL_ADDRESS"], int(variables["UNICASTRTP_LOCAL_PORT"]))
            await asyncio.sleep(0.2)
            await ari.add_to_bridge(bridge_id, [media_id])
            loop = asyncio.get_running_loop()
            t0, n, pt = loop.time(), 0, fmt.default_payload_type
            step = fmt.samples_per_frame
            while n * step < len(tone):
                try:
                    while True:
                        packet = rtp.unpack(sock.recv(2048))
                        received.append(packet)
                        pt = packet.payload_type
                except BlockingIOError:
                    pass
                payload = fmt.encode(tone[n * step:(n + 1) * step])
                sock.sendto(rtp.pack(rtp.RtpPacket(pt, n, n * step, 0x1234, payload, marker=n == 0)), dest)
                n += 1
                await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))
        finally:
            await ari.hangup(channel_id)
            await ari.hangup(media_id)
            await ari.destroy_bridge(bridge_id)
            sock.close()
            finished.set()

    tasks: list[asyncio.Task[None]] = []

    async def on_event(event: AriEvent) -> None:
        if event.type == "StasisStart" and event.channel and not event.channel.is_media_channel:
            tasks.append(asyncio.create_task(run(event.channel.id)))

    ari.start(on_event)
    try:
        await ari.wait_connected()
        result = await place_call_async(caller.script("601", timeout=8))
        await asyncio.wait_for(finished.wait(), 10)
    finally:
        await ari.close()
    assert result.connected, result
    assert received and {p.payload_type for p in received} == {fmt.default_payload_type}
    assert {len(p.payload) for p in received} == {fmt.samples_per_frame * (2 if media_format == "slin16" else 1)}
    return voiced_seconds(read_wav(result.record_path)), len(received)


async def test_ulaw_external_media_reaches_the_caller(eva_settings: Settings, caller: Caller) -> None:
    heard, _ = await _tone_call(eva_settings, caller, "ulaw")
    assert heard >= 2.5  # 3 s of tone sent


async def test_slin16_from_eva_is_dropped_by_asterisk_22(eva_settings: Settings, caller: Caller) -> None:
    """Why Eva's default is ulaw.  chan_rtp never registers a receive mapping for slin16's dynamic payload type
    (118), and Asterisk resolves only static types (0-34) without one, so it discards every packet we send —
    while it happily sends slin16 to us.  If this test fails, Asterisk fixed it: make slin16 the default."""
    heard, received = await _tone_call(eva_settings, caller, "slin16")
    assert received > 50  # Asterisk → Eva works
    assert heard < 0.2  # Eva → Asterisk → caller: silence
