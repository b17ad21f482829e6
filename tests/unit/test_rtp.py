"""RTP codec and jitter buffer: exact bytes, and real packets captured from Asterisk 22's ExternalMedia."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicebot.errors import MediaError
from voicebot.media import rtp

CAPTURED = Path(__file__).parent.parent / "data" / "captured" / "rtp_ulaw_from_asterisk.hex"


def test_pack_exact_bytes() -> None:
    packet = rtp.RtpPacket(payload_type=118, sequence=0x1234, timestamp=0x01020304, ssrc=0xDEADBEEF,
                           payload=b"\x00\x01\xff\xfe", marker=True)
    assert rtp.pack(packet) == bytes.fromhex("80f6123401020304deadbeef0001fffe")
    assert rtp.unpack(rtp.pack(packet)) == packet


def test_slin16_is_big_endian_on_the_wire() -> None:
    samples = np.array([1, -2, 0x1234], dtype=np.int16)
    assert rtp.slin16_encode(samples) == bytes.fromhex("0001fffe1234")
    assert rtp.slin16_decode(bytes.fromhex("0001fffe1234")).tolist() == [1, -2, 0x1234]


def test_ulaw_known_values() -> None:
    # G.711 µ-law: 0xFF and 0x7F are zero, 0x00 is the most negative, 0x80 the most positive.
    assert rtp.ulaw_decode(bytes([0xFF, 0x7F, 0x00, 0x80])).tolist() == [0, 0, -32124, 32124]
    assert rtp.ulaw_encode(np.array([0, -32124, 32124, 32767, -32768], dtype=np.int16)) == bytes(
        [0xFF, 0x00, 0x80, 0x80, 0x00])


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=400))
def test_ulaw_roundtrip_error_is_bounded(values: list[int]) -> None:
    samples = np.array(values, dtype=np.int16)
    back = rtp.ulaw_decode(rtp.ulaw_encode(samples)).astype(np.int32)
    # µ-law keeps ~13 bits: the error is at most ~1/16 of the magnitude (plus the quantiser floor).
    error = np.abs(back - samples.astype(np.int32))
    assert np.all(error <= np.abs(samples.astype(np.int32)) // 16 + 132)


def test_captured_asterisk_packets_decode() -> None:
    lines = CAPTURED.read_text().split()
    packets = [rtp.unpack(bytes.fromhex(line)) for line in lines]
    assert len(packets) >= 50
    assert {p.payload_type for p in packets} == {0}
    assert {len(p.payload) for p in packets} == {160}  # 20 ms of 8 kHz µ-law
    assert len({p.ssrc for p in packets}) == 1
    # Real traffic has gaps (here around the caller's DTMF digit): timestamps still advance 160 per sequence step.
    for a, b in itertools.pairwise(packets):
        steps = (b.sequence - a.sequence) & 0xFFFF
        assert 1 <= steps < 100
        assert (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160 * steps
    assert all(rtp.pack(p) == bytes.fromhex(line) for p, line in zip(packets, lines, strict=True))
    # Through the jitter buffer, the gap becomes counted losses and the clock keeps ticking.
    jb = rtp.JitterBuffer(depth=1)
    for p in packets:
        jb.push(p)
    out = [jb.pop() for _ in range(len(packets) + 20)]
    assert sum(1 for o in out if o is not None) == len(packets)
    assert jb.lost == sum(((b.sequence - a.sequence) & 0xFFFF) - 1 for a, b in itertools.pairwise(packets))


def test_unpack_skips_csrc_extension_and_padding() -> None:
    header = bytes([0x80 | 0x20 | 0x10 | 0x01, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3])
    csrc = b"\x00\x00\x00\x09"
    extension = b"\xbe\xde\x00\x01" + b"\x11\x22\x33\x44"
    payload = b"\xaa\xbb\xcc"
    padding = b"\x00\x00\x03"
    packet = rtp.unpack(header + csrc + extension + payload + padding)
    assert packet.payload == payload and packet.sequence == 1 and packet.timestamp == 2 and packet.ssrc == 3


@pytest.mark.parametrize("data", [b"", b"\x80\x00", bytes(12).replace(b"\x00", b"\x40", 1),
                                  bytes([0xA0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xFF])])
def test_unpack_rejects_garbage(data: bytes) -> None:
    with pytest.raises(MediaError):
        rtp.unpack(data)


def _pkt(seq: int, payload: bytes = b"x") -> rtp.RtpPacket:
    return rtp.RtpPacket(0, seq & 0xFFFF, seq * 160, 1, payload)


def test_jitter_buffer_reorders_drops_duplicates_and_counts_losses() -> None:
    jb = rtp.JitterBuffer(depth=2)
    for seq in (10, 12, 11, 11, 14):
        jb.push(_pkt(seq, bytes([seq])))
    assert jb.duplicates == 1
    assert [jb.pop() for _ in range(4)] == [b"\x0a", b"\x0b", b"\x0c", None]  # 13 lost
    assert jb.lost == 1
    assert jb.pop() == b"\x0e"
    jb.push(_pkt(9))  # older than what was played: dropped
    assert jb.late == 1


def test_jitter_buffer_wraps_sequence_numbers_and_survives_pauses() -> None:
    jb = rtp.JitterBuffer(depth=1)
    for seq in (65534, 65535, 0, 1):
        jb.push(_pkt(seq, seq.to_bytes(2, "big")))
    assert [jb.pop() for _ in range(4)] == [b"\xff\xfe", b"\xff\xff", b"\x00\x00", b"\x00\x01"]
    # Sender paused (its VAD): no packets is silence, not loss.
    assert jb.pop() is None and jb.pop() is None
    assert jb.lost == 0
    jb.push(_pkt(2, b"\x00\x02"))
    assert jb.pop() == b"\x00\x02"


def test_seq_newer_handles_wraparound() -> None:
    assert rtp.seq_newer(1, 65535)
    assert not rtp.seq_newer(65535, 1)
    assert not rtp.seq_newer(5, 5)
