"""eSpeak NG as a voice (Debian's ``espeak-ng``): the embedded fallback for languages without a Piper voice.

No Spanish (or other non-English) neural voice ships in any package we can install, and Piper's English voice
fed Spanish phonemes was measured less intelligible than eSpeak NG itself (``bench/spanish_wer.py``): so an agent
whose language has no Piper voice in the voices folder speaks with eSpeak NG's voice for that language.  It
sounds robotic; ``eva voice add`` installs a real Piper voice for the language (README, "Languages").

Each sentence runs ``espeak-ng`` once, text on stdin (never on the command line, so a reply starting with
``-`` is not an option), bounded in length and time.  It is called from the TTS worker thread, not the loop.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

import numpy as np

from voicebot.audio import Audio, resample
from voicebot.errors import TtsError

VOICE_PREFIX = "espeak:"
MAX_CHARS = 2000
"""One sentence, or a fixed phrase: longer text is cut (the caller hears the start rather than nothing)."""
TIMEOUT_S = 10.0
SPEED_WPM = 130
WORD_GAP_10MS = 8
"""eSpeak's default is 175 words per minute with no pause between words.  Through µ-law and back through Whisper
base, ten Spanish questions had a word error rate of 0.89 at 140 wpm, 0.51 with a 40 ms gap between words and
about 0.4 at 130 wpm with 80 ms (one run each, 2026-12): slower and spaced is what a listener on a phone line
understands best from a formant synthesizer."""


def espeak_binary() -> str:
    return shutil.which("espeak-ng") or ""


@lru_cache(maxsize=1)
def espeak_languages() -> frozenset[str]:
    """The language tags eSpeak NG has voices for (``es``, ``es-419``, ``en-us``, ...), lower case."""
    binary = espeak_binary()
    if not binary:
        return frozenset()
    try:
        listing = subprocess.run([binary, "--voices"], capture_output=True, text=True, timeout=TIMEOUT_S,
                                 check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    tags = set()
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and not fields[3].startswith("mb/"):  # mbrola voices need separate data files
            tags.add(fields[1].lower())
    return frozenset(tags)


PREFERRED = {"es": "es-419"}
"""The voice for a bare language tag where eSpeak has a clearer one than its default: through Asterisk and back
through Whisper base, ten Spanish questions had a word error rate of 0.29 with ``es-419`` against 0.43 with ``es``
(``bench/spanish_voice.py``, one run, 2026-12).  ``es-ES`` still gets the Castilian voice."""


def espeak_voice_for(language: str) -> str:
    """The eSpeak NG voice for a BCP-47 tag (exact tag, else the base language; a bare ``es`` gets
    :data:`PREFERRED`), or '' when eSpeak has none (or is not installed)."""
    tag = language.replace("_", "-").lower()
    available = espeak_languages()
    base = tag.split("-")[0]
    if tag == "es-es" and "es" in available:
        return "es"  # Castilian when asked for
    preferred = PREFERRED.get(base)
    if preferred in available and (tag == base or tag not in available):
        return preferred  # "es", and "es-MX" / "es-AR" that eSpeak has no own voice for
    if tag in available:
        return tag
    if base in available:
        return base
    if f"{base}-{base}" in available:
        return f"{base}-{base}"  # "fr" -> "fr-fr"
    return next((t for t in sorted(available) if t.startswith(base + "-")), "")


def _wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    """The PCM of eSpeak's WAV on stdout (its header's sizes are not final when it streams: find ``data``)."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TtsError("espeak-ng did not produce a WAV stream")
    rate = int.from_bytes(data[24:28], "little")
    start = data.find(b"data", 12)
    if start < 0:
        raise TtsError("espeak-ng produced a WAV without data")
    pcm = data[start + 8:]
    pcm = pcm[:len(pcm) - len(pcm) % 2]
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16), rate


class EspeakTts:
    """One eSpeak NG voice with the :class:`voicebot.tts.piper.PiperTts` interface (``synthesize_blocking``)."""

    def __init__(self, language: str) -> None:
        self.binary = espeak_binary()
        if not self.binary:
            raise TtsError("espeak-ng is not installed (scripts/setup installs it)", code="tts_voice_missing")
        self.voice = espeak_voice_for(language)
        if not self.voice:
            raise TtsError(f"espeak-ng has no voice for language {language!r}", code="tts_voice_missing")
        self.native_rate = 22050

    def synthesize_blocking(self, text: str, rate: int | None = None) -> Audio:
        text = " ".join(text.split())[:MAX_CHARS]
        if not text:
            return Audio(np.zeros(0, dtype=np.int16), rate or self.native_rate)
        try:
            done = subprocess.run([self.binary, "-v", self.voice, "-s", str(SPEED_WPM), "-g", str(WORD_GAP_10MS),
                                   "-b", "1", "--stdin", "--stdout"], input=text.encode("utf-8"), capture_output=True,
                                  timeout=TIMEOUT_S, check=True)
        except subprocess.TimeoutExpired as exc:
            raise TtsError(f"espeak-ng took over {TIMEOUT_S:.0f}s") from exc
        except (OSError, subprocess.CalledProcessError) as exc:
            raise TtsError(f"espeak-ng failed: {exc}") from exc
        samples, native = _wav_samples(done.stdout)
        audio = Audio(samples.copy(), native)
        return resample(audio, rate) if rate and rate != native else audio
