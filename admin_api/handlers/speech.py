"""The speech engines over HTTP: transcribe an uploaded recording, synthesize text to a WAV, and each engine's
status.  The same Whisper and Piper the calls use, sharing their worker threads fairly: a file is transcribed
and a text synthesized piece by piece, so a live caller's turn waits for one piece at most."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Annotated

import numpy as np
from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from admin_api.framework import ApiRouter, Ctx
from admin_api.handlers.common import read_form
from admin_api.schemas import LANGUAGE_TAG, Id, Input, Output
from voicebot.audio import Audio, write_wav
from voicebot.errors import InvalidInput, RateLimited
from voicebot.media.decode import MAX_BYTES, MAX_SECONDS, decode_audio

router = ApiRouter("speech")

MAX_TTS_CHARS = 2000
TTS_RATE = 22050
PIECE_CHARS = 240
"""Longest piece synthesized as one job (about 15 s of speech, well under a second of CPU on 2 cores)."""
_SENTENCES = re.compile(r"(?<=[.!?;:])\s+")


def pieces(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """``text`` in sentences, each sentence over ``limit`` cut at a comma, else a space, else anywhere: no one
    job on the calls' speaker thread may take long, whatever the text."""
    out: list[str] = []
    for sentence in _SENTENCES.split(text):
        rest = sentence.strip()
        while len(rest) > limit:
            cut = max(rest.rfind(", ", 0, limit), rest.rfind(" ", 0, limit))
            cut = cut + 1 if cut > limit // 3 else limit
            out.append(rest[:cut].strip())
            rest = rest[cut:].strip()
        if rest:
            out.append(rest)
    return out


class TranscribeForm(BaseModel):
    """multipart/form-data fields of ``POST /calls/stt/transcribe`` (documentation only; parsed by hand)."""

    file: bytes
    """WAV, OGG/Opus, MP3, WebM or M4A."""
    language: str = ""
    """A BCP-47 tag (``en``, ``es-MX``); empty: Whisper identifies the language."""


class SegmentOut(Output):
    start: float
    end: float
    text: str
    confidence: float
    """exp(average token log-probability): 1.0 certain; below about 0.4 the words are guesses."""
    no_speech_prob: float


class TranscriptOut(Output):
    text: str
    language: str
    """The language transcribed (Whisper's code; identified by Whisper when none was given)."""
    duration_s: float
    processing_s: float
    segments: list[SegmentOut]


class SynthesizeIn(Input):
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TTS_CHARS)]
    language: str = Field(default="en", pattern=LANGUAGE_TAG)
    """The voice of this language (an installed Piper voice, else eSpeak NG)."""
    agent_id: Id | None = None
    """Speak with this agent's voice and language instead."""


class EngineOut(Output):
    name: str
    loaded: bool
    model: str
    languages: list[str]
    busy: bool
    recent_rtf: float | None
    """Processing seconds per second of audio over the last jobs (below 1: faster than real time)."""


class SpeechStatusOut(Output):
    stt: list[EngineOut]
    tts: list[EngineOut]


@router.post("/calls/stt/transcribe", role="designer", errors=(400, 413, 415, 422, 429, 503),
             request_media={"multipart/form-data": TranscribeForm},
             summary=f"Transcribe an audio file (multipart: file, language; at most {MAX_BYTES // 2**20} MiB and "
                     f"{MAX_SECONDS:g} s)")
async def transcribe(ctx: Ctx) -> TranscriptOut:
    stt = ctx.services.need_stt()
    if stt.files_busy:
        raise RateLimited("another recording is being transcribed; try again shortly", retry_after=5,
                          code="speech_busy")
    fields, _name, data = await read_form(ctx.request, file_limit=MAX_BYTES, names={"language"})
    if data is None:
        raise InvalidInput("the upload has no file part", field="file")
    language = fields.get("language", "").strip()
    if language and not re.fullmatch(LANGUAGE_TAG, language):
        raise InvalidInput("language must be a language tag such as en or es-MX", field="language")
    async with stt.file_slot:  # one file at a time: a caller's turn waits for one piece, not one per file
        audio = await decode_audio(data)
        result = await stt.transcribe_file(audio, language)
    return TranscriptOut(text=result.text, language=result.language, duration_s=result.seconds,
                         processing_s=result.processing_s,
                         segments=[SegmentOut.model_validate(s, from_attributes=True) for s in result.segments])


@router.post("/calls/tts/generate", role="designer", errors=(404, 503),
             response_media={"audio/wav": {"type": "string", "format": "binary"}},
             summary=f"Synthesize text (at most {MAX_TTS_CHARS} characters) to a 16-bit mono WAV")
async def synthesize(ctx: Ctx, body: SynthesizeIn) -> web.StreamResponse:
    from voicebot.tts.voices import resolve_voice

    tts = ctx.services.need_tts()
    voice, language = "", body.language
    if body.agent_id is not None:
        agent = await ctx.services.agents.get_agent(body.agent_id)
        voice, language = agent.voice, agent.language
    parts = pieces(body.text)
    if not parts:
        raise InvalidInput("the text has nothing to say", field="text")
    key = await asyncio.to_thread(resolve_voice, voice, language, ctx.services.settings.voices_dir)
    spoken: list[Audio] = []
    for part in parts:
        # One short piece per job on the speaker's thread: a live call's next sentence slips in between.
        spoken.append(await tts.speak(part, TTS_RATE, key))
    pause = np.zeros(TTS_RATE // 5, dtype=np.int16)
    samples = np.concatenate([chunk for piece in spoken for chunk in (piece.samples, pause)][:-1])
    buffer = io.BytesIO()
    write_wav(buffer, Audio(samples, TTS_RATE))
    return web.Response(body=buffer.getvalue(), content_type="audio/wav",
                        headers={"Content-Disposition": 'inline; filename="speech.wav"'})


@router.get("/calls/speech/status", role="viewer", summary="Each speech engine: loaded, model, languages, speed")
async def speech_status(ctx: Ctx) -> SpeechStatusOut:
    stt, tts = ctx.services.stt, ctx.services.tts
    engines: list[EngineOut] = []
    if stt is not None:
        for role, model in stt.models():
            engines.append(EngineOut(name=f"whisper-{role}", loaded=True, model=_model_name(model.path),
                                     languages=["en"] if not model.multilingual else ["*"], busy=model.busy,
                                     recent_rtf=model.recent_rtf))
        if len(engines) == 1 and not stt.english.multilingual:
            engines.append(EngineOut(name="whisper-multilingual", loaded=False,
                                     model=_model_name(stt.multilingual_path), languages=["*"], busy=False,
                                     recent_rtf=None))
    voices: list[EngineOut] = []
    if tts is not None:
        for key, rtf in tts.loaded():
            voices.append(EngineOut(name="espeak" if key.startswith("espeak:") else "piper", loaded=True,
                                    model=_model_name(key) or "packaged English voice",
                                    languages=[key.removeprefix("espeak:")] if key.startswith("espeak:") else [],
                                    busy=tts.busy, recent_rtf=rtf))
    return SpeechStatusOut(stt=engines, tts=voices)


def _model_name(path: str) -> str:
    """A model's file or folder name, never the host's paths."""
    return path.rstrip("/").rsplit("/", 1)[-1] if path else ""


