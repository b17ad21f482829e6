"""RTP (RFC 3550) packing and unpacking, and a small reordering jitter buffer.  Pure: no I/O.

Asterisk's ExternalMedia with ``format=slin16`` sends 20 ms frames of 16 kHz signed linear audio in network byte
order (big-endian): 640-byte payloads, timestamp +320 per frame, a dynamic payload type (118 on Asterisk 22) that
we must echo back.  ``format=ulaw`` sends 160-byte G.711 µ-law payloads (PT 0), timestamp +160.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from voicebot.errors import MediaError

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False


def pack(packet: RtpPacket) -> bytes:
    """Encode a packet (no CSRCs, no extension, no padding)."""
    first = RTP_VERSION << 6
    second = (0x80 if packet.marker else 0) | (packet.payload_type & 0x7F)
    return HEADER.pack(first, second, packet.sequence & 0xFFFF, packet.timestamp & 0xFFFFFFFF,
                       packet.ssrc & 0xFFFFFFFF) + packet.payload


def unpack(data: bytes) -> RtpPacket:
    """Decode a packet, skipping CSRCs, header extension and padding.  Raises MediaError on garbage."""
    if len(data) < HEADER.size:
        raise MediaError(f"RTP packet too short ({len(data)} bytes)", code="rtp_malformed")
    first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise MediaError(f"not RTP version 2 (got {first >> 6})", code="rtp_malformed")
    offset = HEADER.size + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if len(data) < offset + 4:
            raise MediaError("truncated RTP header extension", code="rtp_malformed")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = len(data)
    if first & 0x20:
        if end == 0 or data[-1] == 0 or data[-1] > end - offset:
            raise MediaError("bad RTP padding", code="rtp_malformed")
        end -= data[-1]
    if offset > end:
        raise MediaError("RTP header longer than packet", code="rtp_malformed")
    return RtpPacket(payload_type=second & 0x7F, sequence=sequence, timestamp=timestamp, ssrc=ssrc,
                     payload=bytes(data[offset:end]), marker=bool(second & 0x80))


# ---------------------------------------------------------------------------------------------- payload codecs
def slin16_decode(payload: bytes) -> np.ndarray:
    """Big-endian signed 16-bit → native int16 samples."""
    return np.frombuffer(payload, dtype=">i2").astype(np.int16)


def slin16_encode(samples: np.ndarray) -> bytes:
    return np.asarray(samples, dtype=np.int16).astype(">i2").tobytes()


_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def _build_ulaw_decode_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.int16)
    for value in range(256):
        u = ~value & 0xFF
        sign = u & 0x80
        exponent = (u >> 4) & 0x07
        mantissa = u & 0x0F
        magnitude = ((mantissa << 3) + _ULAW_BIAS) << exponent
        sample = magnitude - _ULAW_BIAS
        table[value] = -sample if sign else sample
    return table


_ULAW_DECODE = _build_ulaw_decode_table()


def ulaw_decode(payload: bytes) -> np.ndarray:
    return _ULAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


def ulaw_encode(samples: np.ndarray) -> bytes:
    pcm = np.asarray(samples, dtype=np.int32)
    sign = np.where(pcm < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(pcm), _ULAW_CLIP) + _ULAW_BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return bytes((~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes())


@dataclass(frozen=True)
class PayloadFormat:
    """How one Asterisk media format maps onto RTP."""

    name: str
    rate: int
    samples_per_frame: int
    default_payload_type: int

    def decode(self, payload: bytes) -> np.ndarray:
        return slin16_decode(payload) if self.name.startswith("slin") else ulaw_decode(payload)

    def encode(self, samples: np.ndarray) -> bytes:
        return slin16_encode(samples) if self.name.startswith("slin") else ulaw_encode(samples)


FORMATS = {
    "slin16": PayloadFormat("slin16", 16000, 320, 118),
    "ulaw": PayloadFormat("ulaw", 8000, 160, 0),
}


def payload_format(name: str) -> PayloadFormat:
    try:
        return FORMATS[name]
    except KeyError as exc:
        raise MediaError(f"unsupported media format {name!r} (choose {', '.join(FORMATS)})",
                         code="media_format_unsupported") from exc


# ---------------------------------------------------------------------------------------------- jitter buffer
def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number ``a`` comes after ``b`` (with wrap-around)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


class JitterBuffer:
    """Reorders packets by sequence number and hands out one payload per clock tick.

    ``push`` accepts packets in any order; duplicates and packets older than what was already played are
    dropped.  ``pop`` returns the next payload in sequence, or ``None`` when it is missing (lost or late): the
    caller substitutes silence, so the consumer's clock never depends on packet arrival.  ``depth`` frames are
    buffered before the first pop so a little reordering can be absorbed.
    """

    def __init__(self, depth: int = 2, capacity: int = 50) -> None:
        self.depth = depth
        self.capacity = capacity
        self._packets: dict[int, bytes] = {}
        self._next: int | None = None
        self._primed = False
        self.lost = 0
        self.duplicates = 0
        self.late = 0

    def push(self, packet: RtpPacket) -> None:
        seq = packet.sequence
        if self._next is not None and seq != self._next and not seq_newer(seq, self._next):
            self.late += 1
            return
        if seq in self._packets:
            self.duplicates += 1
            return
        self._packets[seq] = packet.payload
        if self._next is None:
            self._next = seq
        elif len(self._packets) > self.capacity:
            # Far behind (e.g. a long stall): jump to the oldest packet we hold.
            self._next = min(self._packets, key=lambda s: (s - self._next) & 0xFFFF)  # type: ignore[operator]

    def pop(self) -> bytes | None:
        if self._next is None:
            return None
        if not self._primed:
            if len(self._packets) < self.depth:
                return None
            self._primed = True
        payload = self._packets.pop(self._next, None)
        if payload is None:
            if not self._packets:
                # Stream paused (sender's VAD or end of talk spurt): wait again rather than counting losses.
                self._primed = False
                return None
            self.lost += 1
        self._next = (self._next + 1) & 0xFFFF
        return payload

    def __len__(self) -> int:
        return len(self._packets)
