"""End of turn: our silence rule against the smart-turn v3.2 audio model, in English and Spanish.

The question (livekit's eot-bench asks the same): when the caller stops talking for a moment, has the turn ended?
Answering "yes" too early cuts a caller off mid-sentence (a *false cut-off*); answering "no" when it has ended
makes them wait (*added delay*).  Eva's rule: the turn ends after ``end_of_turn_ms`` (400 ms) of silence, or as
soon as the speculative transcript at a 120 ms pause is a complete sentence (ends in ``. ? !``).  smart-turn v3.2
(``smart-turn-v3.2-cpu.onnx``, 8.7 MB, 23 languages) classifies the last 8 s of audio as complete or not.

Data, per language: the ten questions callers ask the demo agents, synthesized (English: Piper; Spanish: eSpeak NG)
and sent through µ-law as on a call.  *Complete*: the whole question.  *Incomplete*: the same audio cut at a pause
between words in its first two thirds (the caller stopping to think mid-sentence).  Reported: false cut-offs on
the incomplete samples and missed ends on the complete ones for (a) the silence rule (it always ends the turn:
every pause of 400 ms cuts), (b) the silence rule with the punctuation shortcut (Whisper's transcript of what
was said so far), (c) smart-turn; and smart-turn's inference time on this CPU.  Synthetic speech lacks the
hesitation cues real callers give, so these numbers bound what the model can show here, not what it does on
people.

Needs the model file: ``.venv/bin/pip install --no-deps --require-hashes -r requirements/smart-turn.txt``.
Usage: ``.venv/bin/python bench/end_of_turn.py [--json bench/results/end_of_turn.json]``
"""

from __future__ import annotations

import argparse
import audioop
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.spanish_voice import ENGLISH_QUESTIONS, SPANISH_QUESTIONS
from bench.stats import summary
from voicebot.audio import Audio, resample

MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
WINDOW_S = 8


def model_path() -> Path:
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("smart-turn model not installed: .venv/bin/pip install --no-deps --require-hashes "
                         "-r requirements/smart-turn.txt")
    path = Path(next(iter(spec.submodule_search_locations))) / "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
    if hashlib.sha256(path.read_bytes()).hexdigest() != MODEL_SHA256:
        raise SystemExit(f"{path} does not match its pinned sha256")
    return path


def through_ulaw(audio: Audio) -> Audio:
    narrow = resample(audio, 8000)
    coded = audioop.ulaw2lin(audioop.lin2ulaw(narrow.samples.astype("<i2").tobytes(), 2), 2)
    return Audio(np.frombuffer(coded, dtype="<i2").copy(), 8000)


def pauses(audio: Audio, frame_ms: int = 10, quiet_dbfs: float = -40.0) -> list[float]:
    """Middles (s) of the quiet gaps between words, inside the speech."""
    step = audio.rate * frame_ms // 1000
    frames = audio.samples[: len(audio.samples) // step * step].astype(np.float64).reshape(-1, step)
    level = 20 * np.log10(np.sqrt((frames ** 2).mean(axis=1)) / 32768.0 + 1e-9)
    voiced = np.flatnonzero(level > quiet_dbfs)
    if len(voiced) == 0:
        return []
    gaps, start = [], None
    for i in range(int(voiced[0]), int(voiced[-1])):
        if level[i] <= quiet_dbfs and start is None:
            start = i
        elif level[i] > quiet_dbfs and start is not None:
            if i - start >= 3:  # 30 ms or more of quiet: between words
                gaps.append((start + i) / 2 * frame_ms / 1000)
            start = None
    return gaps


class SmartTurn:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort
        from transformers import WhisperFeatureExtractor

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options)
        self.features = WhisperFeatureExtractor(chunk_length=WINDOW_S)  # type: ignore[no-untyped-call]

    def complete_probability(self, audio: Audio) -> tuple[float, float]:
        """(probability the turn is complete, inference ms) for the audio so far."""
        started = time.perf_counter()
        samples = resample(audio, 16000).samples.astype(np.float32) / 32768.0
        samples = samples[-WINDOW_S * 16000:]
        samples = np.pad(samples, (WINDOW_S * 16000 - len(samples), 0))
        features = self.features(samples, sampling_rate=16000, return_tensors="np", do_normalize=True)
        output = self.session.run(None, {"input_features": features["input_features"].astype(np.float32)})
        return float(np.asarray(output[0]).reshape(-1)[0]), (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "end_of_turn.json")
    args = parser.parse_args()
    from voicebot.config import Settings
    from voicebot.stt.multilingual import model_dir
    from voicebot.stt.whisper import WhisperStt
    from voicebot.tts.espeak import EspeakTts
    from voicebot.tts.piper import PiperTts

    model = SmartTurn(model_path())
    installed = Settings.load()
    whisper = {"en": WhisperStt(), "es": WhisperStt(installed.stt_multilingual_model
                                                    or str(model_dir(installed.models_dir)))}
    voices = {"en": lambda t: PiperTts().synthesize_blocking(t, 16000),
              "es": lambda t: EspeakTts("es").synthesize_blocking(t, 16000)}
    questions = {"en": ENGLISH_QUESTIONS, "es": SPANISH_QUESTIONS}
    report: dict[str, object] = {}
    timings: list[float] = []
    for language in ("en", "es"):
        rows = []
        for text in questions[language]:
            full = through_ulaw(voices[language](text))
            inner = [p for p in pauses(full) if p < len(full.samples) / full.rate * 2 / 3]
            samples = [("complete", full)]
            if inner:
                cut = inner[len(inner) // 2]
                samples.append(("incomplete", Audio(full.samples[: int(cut * full.rate)], full.rate)))
            for kind, audio in samples:
                probability, ms = model.complete_probability(audio)
                timings.append(ms)
                heard = whisper[language].transcribe_blocking(audio.samples, audio.rate, language).text
                rows.append({"text": text, "kind": kind, "smart_turn_p": round(probability, 3),
                             "whisper": heard, "punctuated": heard.rstrip().endswith((".", "?", "!"))})
        complete = [r for r in rows if r["kind"] == "complete"]
        incomplete = [r for r in rows if r["kind"] == "incomplete"]
        report[language] = {
            "complete": len(complete), "incomplete": len(incomplete),
            "silence_rule": {"false_cutoffs": len(incomplete), "missed_ends": 0},
            "punctuation_shortcut": {"false_cutoffs": sum(bool(r["punctuated"]) for r in incomplete),
                                     "ends_early": sum(bool(r["punctuated"]) for r in complete)},
            "smart_turn": {"false_cutoffs": sum(float(str(r["smart_turn_p"])) > 0.5 for r in incomplete),
                           "missed_ends": sum(float(str(r["smart_turn_p"])) <= 0.5 for r in complete)},
            "rows": rows,
        }
    report["smart_turn_inference_ms"] = summary(timings)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    for language in ("en", "es"):
        r = report[language]
        assert isinstance(r, dict)
        print(f"{language}: {r['complete']} complete, {r['incomplete']} cut mid-sentence")
        print(f"  silence rule (400 ms)      false cut-offs {r['silence_rule']['false_cutoffs']}/{r['incomplete']}"
              f"  missed ends 0/{r['complete']}")
        print(f"  + punctuation shortcut     cut early on incomplete {r['punctuation_shortcut']['false_cutoffs']}"
              f"/{r['incomplete']}  ends early on complete {r['punctuation_shortcut']['ends_early']}/{r['complete']}")
        print(f"  smart-turn v3.2            false cut-offs {r['smart_turn']['false_cutoffs']}/{r['incomplete']}"
              f"  missed ends {r['smart_turn']['missed_ends']}/{r['complete']}")
    s = report["smart_turn_inference_ms"]
    assert isinstance(s, dict)
    print(f"smart-turn inference: p50 {s['p50']:.0f} ms, p95 {s['p95']:.0f} ms (1 thread)")
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
