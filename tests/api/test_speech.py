"""The speech endpoints with the real engines (Whisper tiny.en and base, Piper, eSpeak NG): text → WAV →
OGG/Opus (as a phone or WhatsApp records it) → transcript with per-segment confidence; language identified by
Whisper; every refusal (size, length, not audio, bad language, roles, no engine); hostile files decoded in the
limited child process never take the server down."""

from __future__ import annotations

import asyncio
import io
import re
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from admin_api.framework import SERVICES_KEY
from admin_api.handlers.speech import PIECE_CHARS, pieces
from tests.api.conftest import Api, offline_settings, start_api
from voicebot.audio import Audio, read_wav, write_wav
from voicebot.config import Settings
from voicebot.errors import EvaError
from voicebot.media.decode import decode_audio
from voicebot.stt.multilingual import model_dir
from voicebot.stt.whisper import SpeechRouter, WhisperStt
from voicebot.tts.espeak import EspeakTts
from voicebot.tts.piper import PiperSpeaker


@pytest.fixture
async def speech_api(tmp_path: Path, sqlite_engine: Engine) -> AsyncIterator[Api]:
    stt = SpeechRouter(WhisperStt(), str(model_dir(Settings.load().models_dir)))
    tts = PiperSpeaker()
    api = await start_api(offline_settings(tmp_path / "data"), sqlite_engine, offline_asterisk=True, stt=stt,
                          tts=tts)
    yield api
    await api.client.close()
    stt.close()
    tts.close()


def encode(audio: Audio, container: str = "ogg", codec: str = "libopus", rate: int = 48000) -> bytes:
    """Compressed audio as phones and apps record it (default: Opus in Ogg, as WhatsApp voice notes)."""
    import av

    from voicebot.audio import resample

    pcm = resample(audio, rate).samples.reshape(1, -1)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm, format="s16p" if codec == "libmp3lame" else "s16", layout="mono")
        frame.rate = rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            out.mux(packet)
    return buffer.getvalue()


def to_ogg(audio: Audio) -> bytes:
    return encode(audio)


def wav_bytes(audio: Audio) -> bytes:
    buffer = io.BytesIO()
    write_wav(buffer, audio)
    return buffer.getvalue()


async def upload(api: Api, data: bytes, *, language: str | None = "en", role: str = "designer",
                 name: str = "note.ogg") -> tuple[int, dict[str, object]]:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(data), filename=name, content_type="application/octet-stream")
    if language is not None:
        form.add_field("language", language)
    response = await api.client.post("/api/v1/calls/stt/transcribe", data=form, headers=api.auth(role))
    return response.status, await response.json()


async def test_text_to_speech_to_text(speech_api: Api) -> None:
    response = await speech_api.client.post("/api/v1/calls/tts/generate", headers=speech_api.auth("designer"),
                                            json={"text": "Our shop opens at nine. We repair flat tires."})
    assert response.status == 200 and response.content_type == "audio/wav"
    with wave.open(io.BytesIO(await response.read())) as handle:
        assert (handle.getnchannels(), handle.getsampwidth(), handle.getframerate()) == (1, 2, 22050)
        seconds = handle.getnframes() / handle.getframerate()
    assert 2.0 < seconds < 8.0
    path = Path(speech_api.settings.data_dir) / "speech.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(await response.read())
    spoken = read_wav(path)

    status, transcript = await upload(speech_api, to_ogg(spoken))
    assert status == 200, transcript
    text = str(transcript["text"]).lower()
    assert re.search(r"\bnine\b|\b9\b", text) and "flat" in text, text
    segments = transcript["segments"]
    assert isinstance(segments, list) and segments
    assert all(0 < s["confidence"] <= 1 and 0 <= s["start"] < s["end"] <= seconds + 0.5 for s in segments)
    assert abs(float(str(transcript["duration_s"])) - seconds) < 0.2
    # A WAV and an MP3 work the same way.
    for data, name in ((wav_bytes(spoken), "note.wav"), (encode(spoken, "mp3", "libmp3lame", 44100), "note.mp3")):
        status, again = await upload(speech_api, data, name=name)
        assert status == 200 and re.search(r"\bnine\b|\b9\b", str(again["text"]).lower()), (name, again)

    status, engines = await speech_api.call("GET", "/api/v1/calls/speech/status", role="viewer")
    assert status == 200
    english = next(e for e in engines["stt"] if e["name"] == "whisper-english")
    assert english["loaded"] and english["recent_rtf"] is not None and 0 < english["recent_rtf"] < 5
    assert "/" not in english["model"]  # a name, not the host's path
    assert engines["tts"] and engines["tts"][0]["recent_rtf"] is not None


async def test_the_language_is_identified_when_none_is_given(speech_api: Api) -> None:
    spanish = EspeakTts("es").synthesize_blocking("Quiero hablar con una persona, por favor.", 16000)
    status, transcript = await upload(speech_api, to_ogg(spanish), language="")
    assert status == 200, transcript
    assert transcript["language"] == "es" and "hablar" in str(transcript["text"]).lower(), transcript


async def test_refusals(speech_api: Api, tmp_path: Path) -> None:
    silence = Audio(np.zeros(16000 * 121, dtype=np.int16), 16000)
    cases: list[tuple[bytes, str | None, str, int, str]] = [
        (b"this is not audio at all" * 50, "en", "designer", 422, "audio_invalid"),
        (wav_bytes(silence), "en", "designer", 413, "audio_too_long"),
        (b"\0" * (10 * 1024 * 1024 + 1), "en", "designer", 413, "payload_too_large"),
        (wav_bytes(Audio(np.zeros(1600, dtype=np.int16), 16000)), "english please", "designer", 422,
         "invalid_input"),
        (b"RIFF", "en", "viewer", 403, "forbidden"),
    ]
    for data, language, role, expected, code in cases:
        status, body = await upload(speech_api, data, language=language, role=role)
        error = body["error"]
        assert isinstance(error, dict) and (status, error["code"]) == (expected, code), (len(data), body)
    response = await speech_api.client.post("/api/v1/calls/stt/transcribe", data=b"raw", headers={
        **speech_api.auth("designer"), "Content-Type": "audio/ogg"})
    assert response.status == 415
    for tts_body, field in (({"text": "x" * 2001}, "text"), ({"text": ""}, "text"), ({"text": "  \n "}, "text"),
                            ({"text": "hi", "voice": "/etc"}, "voice")):  # no voice paths from the outside
        status, error = await speech_api.call("POST", "/api/v1/calls/tts/generate", role="designer",
                                              json=tts_body)
        assert (status, error["error"]["field"]) == (422, field)


async def test_one_recording_at_a_time(speech_api: Api) -> None:
    stt = speech_api.app[SERVICES_KEY].stt
    assert stt is not None
    async with stt.file_slot:  # a voice note is being transcribed
        status, body = await upload(speech_api, wav_bytes(Audio(np.zeros(16000, dtype=np.int16), 16000)))
    error = body["error"]
    assert isinstance(error, dict) and (status, error["code"]) == (429, "speech_busy")


def test_long_text_is_spoken_in_short_pieces() -> None:
    text = ("word " * 400).strip()  # 2000 characters without a stop: one job would hold the calls' speaker
    parts = pieces(text)
    assert all(len(p) <= PIECE_CHARS for p in parts) and " ".join(parts) == text
    assert pieces("Hello there. How are you?") == ["Hello there.", "How are you?"]
    assert pieces("x" * 500) == ["x" * 240, "x" * 240, "x" * 20]
    assert pieces("  \n ") == []


async def test_the_decoder_limits_itself() -> None:
    note = _NOTE
    assert (await decode_audio(note)).seconds > 0.9
    with pytest.raises(EvaError) as refused:
        await decode_audio(note, cpu_seconds=0)  # no CPU time at all: the child stops before decoding
    assert refused.value.code == "audio_invalid"


async def test_without_speech_engines_the_endpoints_say_so(api: Api) -> None:
    status, error = await api.call("POST", "/api/v1/calls/tts/generate", role="designer", json={"text": "Hello"})
    assert (status, error["error"]["code"]) == (503, "tts_unavailable")
    status, body = await upload(api, b"RIFF....")
    assert (status, body["error"]["code"]) == (503, "stt_unavailable")  # type: ignore[index]
    status, engines = await api.call("GET", "/api/v1/calls/speech/status", role="viewer")
    assert (status, engines) == (200, {"stt": [], "tts": []})


_NOTE = to_ogg(Audio((np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440) * 8000).astype(np.int16), 16000))


@settings(max_examples=12, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, len(_NOTE) - 1), st.integers(0, 255)), min_size=1, max_size=40),
       cut=st.integers(0, len(_NOTE)))
def test_damaged_voice_notes_decode_or_are_refused_cleanly(flips: list[tuple[int, int]], cut: int) -> None:
    damaged = bytearray(_NOTE[:cut] or b"x")
    for index, value in flips:
        if index < len(damaged):
            damaged[index] = value
    try:
        audio = asyncio.run(decode_audio(bytes(damaged), max_seconds=5.0))
    except EvaError as exc:
        assert exc.code in ("audio_invalid", "audio_too_long", "audio_decode_timeout"), exc.code
    else:
        assert audio.rate == 16000 and audio.seconds <= 5.0
