"""Spanish on the phone: round-trip word error rate of each Spanish voice option, and Spanish voice-to-voice latency
beside English, on real calls (real Asterisk, real pjsua2 callers, Eva with the embedded models).

Both directions go through Asterisk as µ-law:

* **caller → Eva**: the caller speaks ten Spanish questions with a voice option; Eva's multilingual Whisper
  transcribes them (the turn rows store what it heard); WER against the text that was synthesized.
* **Eva → caller**: the Spanish demo agent (route 101) answers with its voice (eSpeak NG unless a Piper voice for
  Spanish is installed); the caller's recording, transcribed by the same multilingual Whisper, against the reply
  text Eva stored.

Voice options: ``espeak-es`` (what an agent in Spanish speaks with by default), ``espeak-es-419`` and ``piper-joe-es``
(the packaged English Piper voice fed Spanish phonemes by its espeak phonemizer).  Latency: the Spanish calls
(``espeak-es`` caller) against English calls to the English demo agent (route 100, Piper caller) in the same run.

Usage: ``.venv/bin/python bench/spanish_voice.py [--json bench/results/spanish_voice.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import QUESTIONS
from bench.stats import summary
from voicebot.audio import Audio, read_wav, voiced_regions, write_wav

SPANISH_QUESTIONS = [
    "¿A qué hora abren los sábados?",
    "¿Cuánto cuesta reparar un pinchazo?",
    "¿Cuál es la dirección de la tienda?",
    "¿Abren los domingos?",
    "¿Cuánto cuesta alquilar una bicicleta?",
    "¿Dónde está la tienda?",
    "¿Cuánto cuesta una revisión básica?",
    "¿Cuál es su número de teléfono?",
    "¿Hay aparcamiento para bicicletas?",
    "¿A qué hora cierran el viernes?",
]
ENGLISH_QUESTIONS = QUESTIONS  # the English demo's questions, as bench/latency.py asks them


def words(text: str) -> list[str]:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.findall(r"[a-z0-9ñ]+", plain)


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        previous, row[0] = row[:], i
        for j in range(1, len(hyp) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ref[i - 1] != hyp[j - 1]))
    return row[len(hyp)]


def wer(pairs: list[tuple[str, str]]) -> float:
    """Word error rate over (reference, heard) pairs; a runaway transcript counts as at most all words wrong."""
    errors = sum(min(edit_distance(words(r), words(h)), len(words(r))) for r, h in pairs)
    total = sum(len(words(r)) for r, _h in pairs)
    return errors / total if total else float("nan")


def voice_options() -> dict[str, Callable[[str], Audio]]:
    import numpy as np

    from voicebot.tts.espeak import EspeakTts
    from voicebot.tts.piper import PiperTts

    joe = PiperTts()
    joe._voice.config.espeak_voice = "es"  # the English voice reading Spanish phonemes

    def piper_es(text: str) -> Audio:
        chunks = list(joe._voice.synthesize(text))
        return Audio(np.concatenate([np.asarray(c.audio_int16_array, dtype=np.int16).reshape(-1) for c in chunks]),
                     int(chunks[0].sample_rate))

    return {"espeak-es": EspeakTts("es").synthesize_blocking, "espeak-es-419": EspeakTts("es-419").synthesize_blocking,
            "piper-joe-es": piper_es}


async def run(out: Path) -> dict[str, object]:
    from sqlmodel import col, select

    from models import Call, CallTurn, Message
    from models.db import make_engine, session_scope, upgrade
    from voicebot.agent.demo import (
        SPANISH_DOCUMENT,
        SPANISH_TITLE,
        seed_demo_knowledge,
        seed_demo_rows,
        seed_spanish_demo_rows,
    )
    from voicebot.asterisk.process import Asterisk
    from voicebot.harness import free_udp_port, isolated_settings
    from voicebot.server import EvaRuntime
    from voicebot.setup import _prompt_run
    from voicebot.sipcaller import Action, CallScript, place_call_async
    from voicebot.stt.whisper import WhisperStt
    from voicebot.tts.piper import PiperTts

    workdir = Path(tempfile.mkdtemp(prefix="eva-bench-es-"))
    settings = isolated_settings(workdir / "data").with_(llm="embedded", record_calls=False)
    print(f"[bench] preparing an isolated Eva in {workdir} ...", flush=True)
    _prompt_run(settings)
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    await seed_demo_knowledge(settings, engine, await asyncio.to_thread(seed_demo_rows, engine))
    await seed_demo_knowledge(settings, engine, await asyncio.to_thread(seed_spanish_demo_rows, engine),
                              document_path=SPANISH_DOCUMENT, title=SPANISH_TITLE)
    options = voice_options()
    english_tts = PiperTts()
    listener = WhisperStt(settings.stt_multilingual_model)
    english_listener = WhisperStt()
    plan: list[tuple[str, str, str, Audio]] = []  # (option, did, text, audio)
    for name, speak in options.items():
        plan.extend((name, "101", q, speak(q)) for q in SPANISH_QUESTIONS)
    plan.extend(("english", "100", q, english_tts.synthesize_blocking(q, 16000)) for q in ENGLISH_QUESTIONS)
    asterisk = Asterisk(settings)
    asterisk.start()
    runtime = EvaRuntime(settings, with_api=False)
    calls: list[dict[str, object]] = []
    try:
        await runtime.start()
        for n, (option, did, text, audio) in enumerate([plan[0], plan[-1], *plan]):  # two warm-up calls
            path = workdir / f"q{n}.wav"
            write_wav(path, audio)
            speech_end = voiced_regions(audio)[-1][1]
            ask_at = 5.5
            script = CallScript(uri=f"sip:{did}@{settings.bind_host}:{settings.sip_port}",
                                actions=(Action("play", at=ask_at, path=str(path)),),
                                record_path=str(workdir / f"call{n}.wav"), timeout=ask_at + 12,
                                bind_ip=settings.local_carrier_ip, bind_port=free_udp_port())
            result = await place_call_async(script)
            heard = read_wav(result.record_path)
            asked_end = result.events[0]["at"] + speech_end - result.record_offset
            reply = [r for r in voiced_regions(heard, min_gap_s=0.6) if r[0] > asked_end]
            v2v = (reply[0][0] - asked_end) * 1000.0 if reply else float("nan")
            tail = heard.samples[int(max(0.0, reply[0][0] - 0.2) * heard.rate):] if reply else heard.samples[:0]
            ear = listener if did == "101" else english_listener
            reply_heard = await asyncio.to_thread(ear.transcribe_blocking, tail, heard.rate,
                                                  "es" if did == "101" else "en") if len(tail) else None
            with session_scope(engine) as session:
                call = session.exec(select(Call).order_by(col(Call.id).desc())).first()
                turn = session.exec(select(CallTurn).where(CallTurn.call_id == (call.id if call else -1),
                                                           CallTurn.kind == "speech")).first()
                said = session.exec(select(Message).where(Message.role == "assistant")
                                    .order_by(col(Message.id).desc())).first()
            if n < 2:
                continue
            row = {"option": option, "did": did, "asked": text, "eva_heard": turn.user_text if turn else "",
                   "eva_said": said.text if said else "", "caller_heard": reply_heard.text if reply_heard else "",
                   "voice_to_voice_ms": v2v}
            calls.append(row)
            print(f"[bench] {len(calls)}/{len(plan)} {option}: v2v {v2v:.0f} ms, Eva heard {row['eva_heard']!r}",
                  flush=True)
    finally:
        await runtime.close()
        asterisk.stop()
        engine.dispose()
        listener.close()
        english_listener.close()

    def of(option: str) -> list[dict[str, object]]:
        return [c for c in calls if c["option"] == option]

    v2v = {name: summary([float(str(c["voice_to_voice_ms"])) for c in of(name)
                          if c["voice_to_voice_ms"] == c["voice_to_voice_ms"]])
           for name in ("espeak-es", "english")}
    report: dict[str, object] = {
        "caller_to_eva_wer": {name: wer([(str(c["asked"]), str(c["eva_heard"])) for c in of(name)])
                              for name in options},
        "eva_to_caller_wer": {"spanish (espeak-es)": wer([(str(c["eva_said"]), str(c["caller_heard"]))
                                                          for c in calls if c["did"] == "101"]),
                              "english (piper joe)": wer([(str(c["eva_said"]), str(c["caller_heard"]))
                                                          for c in of("english")])},
        "voice_to_voice_ms": v2v,
        "cpus": os.cpu_count(),
        "per_call": calls,
    }
    await asyncio.to_thread(_write_json, out, report)
    return report


def _write_json(out: Path, report: dict[str, object]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "spanish_voice.json")
    args = parser.parse_args()
    report = asyncio.run(run(args.json))
    print("\nround-trip word error rate through Asterisk (µ-law), lower is better")
    for name, value in dict(report["caller_to_eva_wer"]).items():  # type: ignore[call-overload]
        print(f"  caller voice {name:<16} -> Eva's Whisper base: {value:.2f}")
    for name, value in dict(report["eva_to_caller_wer"]).items():  # type: ignore[call-overload]
        print(f"  Eva's voice {name:<20} -> caller's Whisper: {value:.2f}")
    print("voice-to-voice latency, ms (same run)")
    for name, s in dict(report["voice_to_voice_ms"]).items():  # type: ignore[call-overload]
        print(f"  {name:<10} p50 {s['p50']:.0f}  p95 {s['p95']:.0f}  max {s['max']:.0f}  (n={s['n']:.0f})")
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
