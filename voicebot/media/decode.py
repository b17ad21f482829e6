"""Decode an uploaded or received audio file (WAV, OGG/Opus, MP3, WebM, M4A ...) to 16-bit mono PCM, in a child
process with a size, duration, CPU-time and memory limit.

Audio files come from strangers (an upload, a WhatsApp voice note) and are decoded by FFmpeg's C code (PyAV):
their worst cases are not ours to prove, and decoding in the server would compete for the GIL with the event
loop that paces every call's audio.  So :func:`decode_audio` pipes the bytes to ``python -m
voicebot.media.decode`` (niced, ``RLIMIT_CPU``, ``RLIMIT_AS``), which writes raw PCM at the asked rate and stops
at ``max_seconds`` of audio; a child that does not finish within the wall-clock backstop is killed.

Child protocol: ``argv = [rate, max_seconds, cpu_seconds]``; stdin = the file; stdout = little-endian int16
samples; exit 0, or exit 3 with ``{"code", "message"}`` JSON on stderr for a refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from voicebot.audio import Audio
from voicebot.errors import EvaError, InvalidInput, PayloadTooLarge, Unavailable

MAX_BYTES = 10 * 1024 * 1024
MAX_SECONDS = 120.0
CPU_SECONDS = 20
MEMORY_BYTES = 1024 * 1024 * 1024
WALL_FACTOR = 3.0
"""Wall-clock backstop = this × the CPU budget (the child is niced and may wait on a busy machine)."""
_REFUSED = 3
_ROOT = Path(__file__).resolve().parents[2]


class AudioTooLong(PayloadTooLarge):
    code = "audio_too_long"


async def decode_audio(data: bytes, *, rate: int = 16000, max_seconds: float = MAX_SECONDS,
                       max_bytes: int = MAX_BYTES, cpu_seconds: int = CPU_SECONDS) -> Audio:
    """The file's first audio stream as mono PCM at ``rate``.  Raises PayloadTooLarge (file over ``max_bytes``),
    AudioTooLong (over ``max_seconds``), InvalidInput ``audio_invalid`` (not audio, or undecodable) or
    ``audio_decode_timeout``."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the audio file is larger than {max_bytes // (1024 * 1024)} MiB", field="file")
    if not data:
        raise InvalidInput("the audio file is empty", code="audio_invalid", field="file")

    # No preexec_fn: in a threaded server it forces a full fork and may deadlock before exec; the child sets
    # its own limits first thing.  Nor the server's environment (tokens, database URL): only what Python needs.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicebot.media.decode", str(rate), str(max_seconds), str(cpu_seconds),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=str(_ROOT), env=env)
    try:
        out, err = await asyncio.wait_for(process.communicate(data), max(10.0, cpu_seconds * WALL_FACTOR))
    except TimeoutError as exc:  # the machine is starved (the CPU budget would have stopped a hostile file)
        raise Unavailable("the audio could not be decoded in time; try again", code="audio_decode_timeout",
                          field="file") from exc
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.returncode == _REFUSED:
        try:
            refusal = json.loads(err.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            refusal = {"code": "audio_invalid", "message": "the audio file could not be decoded"}
        if refusal.get("code") == "audio_too_long":
            raise AudioTooLong(str(refusal.get("message")), field="file")
        raise InvalidInput(str(refusal.get("message"))[:300], code="audio_invalid", field="file")
    if process.returncode != 0:
        # Killed by its CPU or memory limit (SIGXCPU, MemoryError) or crashed in C: the file is the cause.
        raise InvalidInput("the audio file could not be decoded within the limits", code="audio_invalid",
                           field="file")
    samples = np.frombuffer(out[: len(out) // 2 * 2], dtype="<i2").astype(np.int16)
    if not len(samples):
        raise InvalidInput("the audio file holds no sound", code="audio_invalid", field="file")
    return Audio(samples, rate)


# ---------------------------------------------------------------------------------------------- the child
def _refuse(code: str, message: str) -> None:
    sys.stderr.write(json.dumps({"code": code, "message": message}) + "\n")
    sys.stderr.flush()
    sys.exit(_REFUSED)


def _frames(decoded: Iterator[Any]) -> Iterator[Any]:
    """The audio frames one by one (never all in memory), then None: the resampler's flush."""
    yield from decoded
    yield None


def _decode(data: bytes, rate: int, max_seconds: float) -> None:
    import av

    limit = math.ceil(max_seconds * rate)
    written = 0
    out = sys.stdout.buffer
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = [s for s in container.streams if s.type == "audio"]
            if not streams:
                _refuse("audio_invalid", "the file holds no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in _frames(container.decode(streams[0])):
                for chunk in resampler.resample(frame):
                    samples = chunk.to_ndarray().reshape(-1)
                    written += len(samples)
                    if written > limit:
                        _refuse("audio_too_long", f"the audio is longer than {max_seconds:g} seconds")
                    out.write(samples.astype("<i2").tobytes())
    except av.FFmpegError as exc:
        _refuse("audio_invalid", f"the audio file could not be decoded ({type(exc).__name__})")
    out.flush()


def _limit_self(cpu_seconds: int) -> None:
    """Before reading a byte of the file: low priority, a CPU-time budget, a memory ceiling."""
    import resource

    os.nice(10)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def main(argv: list[str]) -> None:
    rate, max_seconds, cpu_seconds = int(argv[0]), float(argv[1]), int(argv[2])
    _limit_self(cpu_seconds)
    _decode(sys.stdin.buffer.read(), rate, max_seconds)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except EvaError as exc:  # pragma: no cover - nothing here raises one; kept so a refusal is never a traceback
        _refuse(exc.code, exc.message)
