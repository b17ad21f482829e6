"""A Spanish call end to end: the Spanish demo agent (route 101) hears a Spanish question with the multilingual
Whisper, answers from its Spanish document with the embedded LLM, and speaks Spanish (eSpeak NG: no Spanish Piper
voice is installed), all through real Asterisk and a real SIP caller."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import col, select

from models import Agent, Call, CallTurn, Message
from models.db import session_scope
from tests.conftest import Caller
from tests.voice.conftest import heard_phrase, load
from voicebot.agent.demo import SPANISH_AGENT, SPANISH_DID
from voicebot.audio import Audio, resample, voiced_regions, write_wav
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async
from voicebot.stt.whisper import WhisperStt
from voicebot.tts.espeak import EspeakTts

pytestmark = pytest.mark.asyncio(loop_scope="session")  # asterisk/models marks: derived (tests/conftest.py)


@pytest.fixture(scope="module")
def spanish_whisper(runtime: EvaRuntime) -> WhisperStt:
    return WhisperStt(runtime.settings.stt_multilingual_model)


def _language_odds(whisper: WhisperStt, audio: Audio) -> dict[str, float]:
    """Whisper's own language identification of ``audio`` (no language forced): language -> probability."""
    samples = resample(audio, 16000).samples.astype(np.float32) / 32768.0
    _segments, info = whisper._any_model().transcribe(samples, language=None, beam_size=1, without_timestamps=True)
    return dict(info.all_language_probs or [])


def _transcribe_es(whisper: WhisperStt, audio: Audio) -> str:
    return " ".join(whisper.transcribe_blocking(audio.samples[int(max(0.0, a - 0.2) * audio.rate):
                                                              int((b + 0.2) * audio.rate)], audio.rate, "es").text
                    for a, b in voiced_regions(audio, min_gap_s=0.6))


@pytest.mark.usefixtures("real_agent")
async def test_a_spanish_caller_is_answered_in_spanish_from_the_spanish_document(
        runtime: EvaRuntime, caller: Caller, tmp_path: Path, spanish_whisper: WhisperStt) -> None:
    question = tmp_path / "pregunta.wav"
    write_wav(question, EspeakTts("es").synthesize_blocking("¿Cuánto cuesta alquilar una bicicleta?", 16000))
    result = await place_call_async(caller.script(SPANISH_DID, Action("play", when_quiet=0.8, path=str(question)),
                                                  Action("hangup", when_quiet=3.0), timeout=40))
    assert result.connected, result
    recording = load(result.record_path)
    heard = _transcribe_es(spanish_whisper, recording).lower()
    assert heard_phrase(heard, "bicicletas sol", 0.7), heard  # the Spanish greeting
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        agent = session.exec(select(Agent).where(Agent.name == SPANISH_AGENT)).one()
        call = session.exec(select(Call).where(Call.agent_id == agent.id).order_by(col(Call.id).desc())).first()
        assert call is not None
        turns = list(session.exec(select(CallTurn).where(CallTurn.call_id == call.id, CallTurn.kind == "speech")))
        reply = session.exec(select(Message).where(Message.role == "assistant")
                             .order_by(col(Message.id).desc())).first()
    assert turns, "the Spanish question was not heard as a turn"
    assert re.search(r"bicicleta|alquil", turns[0].user_text or "", re.IGNORECASE), turns[0].user_text
    assert reply is not None
    # "Alquilar una bicicleta cuesta 20 euros al día.": the fact, in Spanish, from the Spanish document.
    assert re.search(r"\b20\b|veinte", reply.text) and re.search(r"euros|día|cuesta", reply.text), \
        reply.text
    # The caller heard the price sentence ("Alquilar una bicicleta cuesta veinte euros al día"): eSpeak's "veinte"
    # itself comes back from Whisper base as "mente" or "en este" (bench/spanish_voice.py measures the round trip),
    # so the number is checked in what was said (above), the sentence in what was heard: its start or its end, as
    # Whisper keeps one or the other when every core is busy with calls (CI heard "cuesta veinte" as "cuéntame", and
    # once "... una bicicleta cuesta en el peor alquilla").  The start is matched at 0.8, three words long: the
    # greeting's "de bicicletas sol" alone passes for "bicicleta cuesta" at 0.7.  The caller's own question is not
    # in the caller's recording (it holds what the caller heard).
    assert heard_phrase(heard, "una bicicleta cuesta", 0.8) or heard_phrase(heard, "euros al día", 0.7), heard
    # What the caller heard after the greeting is Spanish, not English, by Whisper's own language identification
    # (on eSpeak's robotic voice its first guess was once Latin: the check is Spanish against English).
    regions = voiced_regions(recording, min_gap_s=0.6)
    assert len(regions) >= 2, (regions, heard)
    reply_audio = Audio(recording.samples[int(regions[1][0] * recording.rate):int(regions[-1][1] * recording.rate)],
                        recording.rate)
    odds = _language_odds(spanish_whisper, reply_audio)
    assert odds.get("es", 0.0) > 5 * odds.get("en", 0.0), (sorted(odds.items(), key=lambda kv: -kv[1])[:3], heard)
