"""WhatsApp voice notes: Meta's documented audio webhook in, the media downloaded through the Graph API's media
endpoints (id → URL → bytes, checked against its sha256), the OGG/Opus decoded in the limited child process and
transcribed by the calls' Whisper, then answered like a text.  A note that cannot be heard gets a polite
answer."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from models import InboundMessage, Message
from tests.channels.test_whatsapp_service import World, make_world, payload
from tests.fakes.graph_server import FakeGraph
from voicebot.audio import resample
from voicebot.config import Settings
from voicebot.i18n import phrase
from voicebot.stt.multilingual import model_dir
from voicebot.stt.whisper import SpeechRouter, WhisperStt
from voicebot.tts.piper import PiperTts


@pytest.fixture(scope="module")
def voice_note() -> bytes:
    """A question spoken by Piper, as WhatsApp records it: Opus in Ogg at 48 kHz."""
    import av

    spoken = PiperTts().synthesize_blocking("What time do you open on Saturday?", 16000)
    pcm = resample(spoken, 48000).samples.reshape(1, -1)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.rate = 48000
        for packet in (*stream.encode(frame), *stream.encode(None)):
            out.mux(packet)
    return buffer.getvalue()


@pytest.fixture
async def voice_world(sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> AsyncIterator[World]:
    stt = SpeechRouter(WhisperStt(), str(model_dir(Settings.load().models_dir)))
    world = await make_world(sqlite_db, graph, tmp_path, stt=stt)
    yield world
    await world.service.close()
    await world.service.client.close()
    await world.api.client.close()
    stt.close()


def audio_payload(media_id: str, wamid: str = "wamid.voice-1") -> dict[str, Any]:
    data = payload("audio_message")
    message = data["entry"][0]["changes"][0]["value"]["messages"][0]
    message["id"] = wamid
    message["audio"]["id"] = media_id
    return data


async def test_a_voice_note_is_transcribed_and_answered(voice_world: World, voice_note: bytes) -> None:
    media_id = voice_world.graph.add_media(voice_note, "audio/ogg; codecs=opus")
    status, body = await voice_world.post(audio_payload(media_id))
    assert (status, body["accepted"]) == (200, 1)
    await voice_world.service.drain()
    assert voice_world.graph.media_downloads == 1
    heard = voice_world.llm.calls[-1][-1].content.lower()  # what the model was asked: the words of the note
    assert "saturday" in heard and "open" in heard, heard
    (reply,) = voice_world.graph.sent
    assert reply["text"]["body"].lower().startswith("you said: what time do you open")
    user, _assistant = voice_world.rows(Message)
    assert user.role == "user" and "saturday" in user.text.lower()
    (row,) = voice_world.rows(InboundMessage)
    assert row.status == "done" and "saturday" in row.text.lower()  # kept: a retry answers these words


async def test_a_voice_note_that_cannot_be_heard_gets_a_polite_answer(voice_world: World, voice_note: bytes) -> None:
    graph = voice_world.graph
    cases = [
        graph.add_media(b"this is not audio" * 20, "audio/ogg"),  # not audio inside
        graph.add_media(voice_note, "audio/ogg", sha256="not-its-hash"),  # tampered on the way
        graph.add_media(voice_note, "application/x-msdownload"),  # not a sound at all
        graph.add_media(b"\0" * (10 * 1024 * 1024 + 1), "audio/ogg"),  # over the size limit
        # The token goes nowhere but Meta's hosts (or the configured API's): not to another host, not to a
        # look-alike, not with credentials in the URL, not over plain http or another port.
        graph.add_media(voice_note, "audio/ogg", url="https://evil.example/x"),
        graph.add_media(voice_note, "audio/ogg", url="https://lookaside.fbsbx.com.evil.example/x"),
        graph.add_media(voice_note, "audio/ogg", url="https://u:p@lookaside.fbsbx.com/x"),
        graph.add_media(voice_note, "audio/ogg", url="http://lookaside.fbsbx.com/x"),
        graph.add_media(voice_note, "audio/ogg", url="https://lookaside.fbsbx.com:8443/x"),
        graph.add_media(voice_note, "audio/ogg", url="https://lookaside.fbsbx.com:99999/x"),
    ]
    for index, media_id in enumerate(cases):
        status, _ = await voice_world.post(audio_payload(media_id, wamid=f"wamid.bad-{index}"))
        assert status == 200
    await voice_world.service.drain()
    unclear = phrase("whatsapp_voice_unclear")
    assert [m["text"]["body"] for m in graph.sent] == [unclear] * len(cases)
    assert voice_world.llm.calls == []  # nothing unheard reached the model
    assert graph.media_downloads == 2  # the wrong type and the oversized file were never downloaded
    assert {r.status for r in voice_world.rows(InboundMessage)} == {"done"}


async def test_without_speech_recognition_a_voice_note_is_declined_as_before(
        sqlite_db: Engine, graph: FakeGraph, tmp_path: Path, voice_note: bytes) -> None:
    world = await make_world(sqlite_db, graph, tmp_path)
    try:
        media_id = graph.add_media(voice_note, "audio/ogg")
        await world.post(audio_payload(media_id))
        await world.service.drain()
        assert [m["text"]["body"] for m in graph.sent] == [phrase("whatsapp_text_only")]
        assert graph.media_downloads == 0
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()
