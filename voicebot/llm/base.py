"""The one language-model interface every backend implements, and its typed values.

A backend streams a reply for a list of :class:`ChatMessage` as typed events: :class:`TextDelta` (a piece of
the reply, in order), :class:`ToolCall` (the model asks the caller to run a tool) and, last, exactly one
:class:`Done` (why it stopped, token counts).  Failures raise :class:`~voicebot.errors.LlmError` subclasses.

Cancellation: the stream is an async generator.  Cancelling the task that iterates it (barge-in) or closing it
(``contextlib.aclosing``) stops generation promptly: the Ollama backend drops the HTTP stream, the embedded
backend raises a flag its worker thread checks after every token.  Consumers that may stop early should
iterate inside ``async with contextlib.aclosing(llm.stream(...)) as events:`` so the stop is immediate rather
than left to garbage collection.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]

_TAG_TOKEN = re.compile(
    r"<(/?)(tool_call|tool_response|tools|think|start_of_turn|end_of_turn|bos|eos|s|pad|unk)>|\[(/?)INST\]|<<(/?)SYS>>",
    re.IGNORECASE)


def defuse(text: str) -> str:
    """``text`` with nothing a chat template or tokenizer could take for one of its own control tokens.

    Prompts are tokenized with the model's special tokens recognised (they must be, for the template's own
    ``<|im_start|>``), so a message, a document passage or a contact's CSV cell holding ``<|im_end|><|im_start|>
    system`` would otherwise open a forged system turn.  A space goes inside every ``<|`` and ``|>`` (one pass is
    enough: the inserted space can never form a new pair) and inside the tag-like tokens of the common templates
    (Qwen's ``<tool_call>``, Gemma's ``<start_of_turn>``, Llama's ``[INST]``, ``</s>``).  Readable text is
    unchanged for people and barely changed for the model.  Pure."""
    text = text.replace("<|", "< |").replace("|>", "| >")
    return _TAG_TOKEN.sub(lambda m: m.group(0)[0] + " " + m.group(0)[1:], text)


@dataclass(frozen=True)
class ToolCall:
    """The model asks for ``name(**arguments)``.  ``id`` is unique within one reply."""

    name: str
    arguments: Mapping[str, Any]
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": dict(self.arguments)}


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation sent to the model.

    ``tool_calls`` on an assistant message records the calls it made; a ``tool`` message carries one tool's
    result in ``content`` and names the tool in ``tool_name``."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_name: str = ""


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model: name, what it does, and a JSON-schema object of its parameters."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_json_schema_tool(self) -> dict[str, Any]:
        """The ``{"type": "function", "function": {...}}`` form Ollama and OpenAI-style APIs take."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description,
                             "parameters": dict(self.parameters)}}


@dataclass(frozen=True)
class GenerationOptions:
    """Per-request knobs.  ``model`` empty → the backend's default model."""

    model: str = ""
    temperature: float = 0.3
    max_tokens: int = 160
    stop: tuple[str, ...] = ()
    language: str = "en"
    """The agent's language: a backend that adds its own instructions (the grounding rule) writes them in it."""
    json_schema: Mapping[str, Any] | None = None
    """Constrain the reply to JSON matching this schema (the embedded model samples through a grammar made from
    it, Ollama takes it as ``format``).  Such replies are bookkeeping (message analysis), not conversation: the
    embedded backend keeps no snapshot of them."""


@dataclass(frozen=True)
class TextDelta:
    """The next piece of reply text (concatenate all deltas for the full reply)."""

    text: str


FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class Done:
    """The last event of every successful stream."""

    finish_reason: FinishReason
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_evaluated: int | None = None
    """Of ``prompt_tokens``, how many the model evaluated (the rest came from its KV cache); None when the
    backend cannot tell."""
    prompt_eval_ms: float | None = None
    """How long evaluating them took (to the first generated token), when the backend can tell."""


LlmEvent = TextDelta | ToolCall | Done


class LanguageModel(abc.ABC):
    """A chat model that streams replies.  Implementations: ``OllamaLLM``, ``EmbeddedLLM``."""

    name: str
    """Backend name for logs and metrics: ``ollama`` or ``embedded``."""
    supports_tools: bool
    """Whether ``tools`` passed to :meth:`stream` can be called by the model."""
    caches_prefix: bool = False
    """Whether the backend keeps evaluated prompt prefixes (then callers should keep the system prompt and
    knowledge identical across turns, so only new words are evaluated)."""
    in_flight: int = 0
    """Generations running or queued now (background work waits while the model is busy with people)."""

    @property
    @abc.abstractmethod
    def default_model(self) -> str:
        """The model used when :attr:`GenerationOptions.model` is empty."""

    @abc.abstractmethod
    def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
               knowledge: Sequence[str] = (),
               options: GenerationOptions | None = None) -> AsyncGenerator[LlmEvent, None]:
        """Stream the assistant's reply to ``messages``.

        ``knowledge`` holds reference passages the reply should draw on; each backend presents them in the
        form its model understands best (a system-prompt section for chat models, a ``Knowledge:`` block in a
        few-shot transcript for base models).  ``tools`` are ignored by backends without tool support.
        Raises :class:`~voicebot.errors.LlmError` (or a subclass) when the model cannot answer."""

    @abc.abstractmethod
    async def list_models(self) -> list[str]:
        """Names of the models this backend can serve."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections, threads and model memory.  Idempotent."""
