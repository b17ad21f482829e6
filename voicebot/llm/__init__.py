"""Language-model backends behind one small async interface (see ``voicebot.llm.base``).

``await create_llm(settings)`` picks the backend from ``EVA_LLM``:

* ``ollama``: the Ollama server at ``EVA_OLLAMA_URL`` (production default for machines with a GPU host);
* ``embedded``: llama.cpp in-process with the GGUF at ``EVA_LLM_MODEL_PATH`` or the packaged Gemma 3 270M;
* ``auto``: Ollama when it answers within a short probe and has ``EVA_OLLAMA_MODEL``, else embedded.  The
  choice and its reason are logged.
"""

from __future__ import annotations

import logging

from voicebot.config import Settings
from voicebot.errors import ConfigError
from voicebot.llm.base import (
    ChatMessage,
    Done,
    GenerationOptions,
    LanguageModel,
    LlmEvent,
    TextDelta,
    ToolCall,
    ToolSpec,
)

log = logging.getLogger(__name__)

BACKENDS = ("auto", "ollama", "embedded")
PROBE_SECONDS = 1.5

__all__ = [
    "BACKENDS",
    "ChatMessage",
    "Done",
    "GenerationOptions",
    "LanguageModel",
    "LlmEvent",
    "TextDelta",
    "ToolCall",
    "ToolSpec",
    "create_llm",
    "model_available",
]


def model_available(wanted: str, available: list[str]) -> bool:
    """Ollama names ``llama3.2`` and ``llama3.2:latest`` the same model."""
    def norm(name: str) -> str:
        return name if ":" in name else f"{name}:latest"

    return norm(wanted) in {norm(name) for name in available}


async def create_llm(settings: Settings) -> LanguageModel:
    """The backend ``settings.llm`` asks for (see the module docstring).  The caller owns it: ``await
    llm.close()`` when done."""
    choice = settings.llm.strip().lower()
    if choice not in BACKENDS:
        raise ConfigError(f"EVA_LLM must be one of {', '.join(BACKENDS)}, not {settings.llm!r}", field="llm")
    if choice == "ollama":
        from voicebot.llm.ollama import OllamaLLM

        log.info("LLM backend: ollama at %s (model %s)", settings.ollama_url, settings.ollama_model)
        return OllamaLLM(settings)
    if choice == "auto":
        from voicebot.llm.ollama import OllamaLLM, probe

        models = await probe(settings.ollama_url, wait=PROBE_SECONDS)
        if models is not None and model_available(settings.ollama_model, models):
            log.info("LLM backend: ollama at %s (model %s; EVA_LLM=auto)", settings.ollama_url,
                     settings.ollama_model)
            return OllamaLLM(settings)
        reason = ("not reachable" if models is None
                  else f"reachable but without model {settings.ollama_model!r}")
        log.info("LLM backend: embedded llama.cpp (Ollama at %s %s; EVA_LLM=auto)", settings.ollama_url,
                 reason)
    from voicebot.llm.embedded import EmbeddedLLM

    llm = await EmbeddedLLM.load(settings)
    if choice == "embedded":
        log.info("LLM backend: embedded llama.cpp (%s)", llm.model_path.name)
    return llm
