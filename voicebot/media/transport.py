"""Media transports between Asterisk and a call's pipeline.

A transport owns the call's media clock: every 20 ms (by deadline, ``t0 + n·20 ms``, never ``sleep(0.02)`` in a
loop) it hands the pipeline exactly one incoming frame (silence when the caller's stream paused or a packet was
lost) and sends exactly one outgoing frame (silence when the bot is quiet).  So the pipeline's notion of time never
depends on packet arrival, outgoing audio never bursts and never drifts.

``RtpTransport`` speaks RTP to an ExternalMedia channel.  Format: ``ulaw`` (8 kHz).  ``slin16`` is implemented
too, but Asterisk 22's chan_rtp registers no receive mapping for slin16's dynamic payload type 118, so Asterisk
drops what we send (see tests/media/test_external_media.py, which pins that behaviour); PSTN callers are
narrowband G.711 anyway, so 8 kHz loses nothing for them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from voicebot.audio import Pcm
from voicebot.errors import MediaError
from voicebot.media import rtp
from voicebot.media.ports import PortAllocator

log = logging.getLogger(__name__)

FRAME_MS = 20
MAX_LATE_FRAMES = 3
"""When the clock falls this far behind (a stalled loop), skip ahead instead of sending a burst."""


class FrameSource(Protocol):
    def __call__(self) -> Pcm | None: ...


FrameSink = Callable[[Pcm, float], None]
"""Receives one incoming frame and the clock time of its tick."""


@dataclass
class PacingStats:
    """Send times of outgoing frames relative to their deadlines (for the jitter benchmark)."""

    sent: int = 0
    voiced: int = 0
    """Frames of the bot's audio among ``sent`` (the rest were silence while it was quiet)."""
    skipped: int = 0
    longest_stall_ms: float = 0.0
    """The longest the clock woke after a frame's deadline when it had to skip frames (a blocked loop)."""
    lateness_ms: list[float] = field(default_factory=list)
    keep: int = 3000

    def record(self, late_s: float, voiced: bool = False) -> None:
        self.sent += 1
        self.voiced += voiced
        if len(self.lateness_ms) < self.keep:
            self.lateness_ms.append(late_s * 1000.0)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, transport: RtpTransport) -> None:
        self.owner = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner._on_datagram(data, addr)


class RtpTransport:
    """RTP to/from one ExternalMedia channel, with its own 20 ms clock."""

    def __init__(self, ports: PortAllocator, media_format: str = "ulaw") -> None:
        self.format = rtp.payload_format(media_format)
        self.rate = self.format.rate
        self.frame_samples = self.format.samples_per_frame
        self._ports = ports
        self._sock: socket.socket | None = ports.bind()
        self.local_port: int = self._sock.getsockname()[1]
        self.local_host: str = self._sock.getsockname()[0]
        self.remote: tuple[str, int] | None = None
        self.jitter = rtp.JitterBuffer(depth=1)
        self.payload_type = self.format.default_payload_type
        self._seq = random.randint(0, 0xFFFF)
        self._ts = random.randint(0, 0x7FFFFFFF)
        self._ssrc = random.randint(1, 0xFFFFFFFF)
        self._dgram: asyncio.DatagramTransport | None = None
        self._clock: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = PacingStats()
        self.packets_in = 0
        self.rejected = 0
        self._silence = np.zeros(self.frame_samples, dtype=np.int16)
        self._first_out = True

    @property
    def external_host(self) -> str:
        return f"{self.local_host}:{self.local_port}"

    def set_remote(self, host: str, port: int) -> None:
        """Asterisk's RTP address (UNICASTRTP_LOCAL_ADDRESS/PORT); packets from anywhere else are rejected."""
        self.remote = (host, port)

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.remote is not None and addr != self.remote:
            self.rejected += 1
            return
        try:
            packet = rtp.unpack(data)
        except MediaError:
            self.rejected += 1
            return
        if packet.payload_type >= 72 and packet.payload_type <= 76:  # RTCP multiplexed: not ours
            return
        self.payload_type = packet.payload_type  # echo what Asterisk sends
        self.packets_in += 1
        self.jitter.push(packet)

    async def start(self, on_frame: FrameSink, next_frame: FrameSource) -> None:
        """Attach the socket to the loop and start the clock."""
        if self._sock is None:
            raise MediaError("transport is closed", code="media_closed")
        loop = asyncio.get_running_loop()
        self._dgram, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self), sock=self._sock)
        self._clock = asyncio.create_task(self._run_clock(on_frame, next_frame), name=f"media-clock-{self.local_port}")

    async def _run_clock(self, on_frame: FrameSink, next_frame: FrameSource) -> None:
        loop = asyncio.get_running_loop()
        period = FRAME_MS / 1000.0
        t0 = loop.time()
        n = 0
        while True:
            deadline = t0 + n * period
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            late_frames = int((now - deadline) / period)
            if late_frames >= MAX_LATE_FRAMES:
                # The loop stalled: skip the missed slots (timestamps jump as real time did) rather than burst.
                self.stats.longest_stall_ms = max(self.stats.longest_stall_ms, (now - deadline) * 1000.0)
                n += late_frames
                self._ts = (self._ts + late_frames * self.frame_samples) & 0xFFFFFFFF
                self.stats.skipped += late_frames
                deadline = t0 + n * period
            # Normally one incoming frame per tick.  After a stall, also hand over the backlog, so what the
            # pipeline hears (barge-in, end of turn) keeps up with real time instead of lagging behind it.
            backlog = 1 + max(0, len(self.jitter) - self.jitter.depth - 1)
            try:
                outgoing = next_frame()
                self._send(outgoing if outgoing is not None else self._silence, now - deadline,
                           voiced=outgoing is not None)
                for _ in range(backlog):
                    payload = self.jitter.pop()
                    on_frame(self.format.decode(payload) if payload is not None else self._silence, now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("media clock callback failed")
            n += 1

    def _send(self, samples: Pcm, late_s: float, voiced: bool = False) -> None:
        if self.remote is None or self._dgram is None:
            return
        if len(samples) != self.frame_samples:
            samples = np.resize(samples, self.frame_samples) if len(samples) else self._silence
        packet = rtp.RtpPacket(self.payload_type, self._seq, self._ts, self._ssrc, self.format.encode(samples),
                               marker=self._first_out)
        self._first_out = False
        self._dgram.sendto(rtp.pack(packet), self.remote)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + self.frame_samples) & 0xFFFFFFFF
        self.stats.record(late_s, voiced)

    async def close(self) -> None:
        """Stop the clock and release the port.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._clock is not None:
                self._clock.cancel()
                try:
                    await self._clock
                except asyncio.CancelledError:
                    if (task := asyncio.current_task()) is not None and task.cancelling():
                        raise
        finally:
            # Released even when the closing task is itself cancelled while the clock winds down: a socket left
            # to the garbage collector is a port (and a file descriptor) lost until it runs.
            if self._dgram is not None:
                self._dgram.close()
                self._dgram = None
            if self._sock is not None:
                self._ports.release(self._sock)
                self._sock = None

