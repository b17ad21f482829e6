"""Ollama backend (the production default): streaming ``/api/chat`` with tools via ``ollama.AsyncClient``.

Errors are mapped to stable codes: server unreachable → ``llm_unavailable``; model not pulled →
``llm_model_missing``; no byte within ``EVA_OLLAMA_TIMEOUT`` → ``llm_timeout``; an HTTP error, an error
object mid-stream, a malformed line or a stream that ends without ``done`` → ``llm_error``.

Models that do not support tools make Ollama answer HTTP 400; the backend then retries that request without
tools and remembers the model, so an agent configured with such a model still answers.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, cast

import httpx
import ollama
from pydantic import ValidationError

from voicebot.config import Settings
from voicebot.errors import LlmError, LlmModelMissing, LlmTimeout, LlmUnavailable
from voicebot.llm.base import (
    ChatMessage,
    Done,
    FinishReason,
    GenerationOptions,
    LanguageModel,
    LlmEvent,
    TextDelta,
    ToolCall,
    ToolSpec,
    defuse,
)
from voicebot.llm.chatml import ContextNote, SystemNote

log = logging.getLogger(__name__)


def knowledge_section(knowledge: Sequence[str]) -> str:
    """Reference passages as a system-prompt section for instruction-tuned chat models."""
    if not knowledge:
        return ""
    numbered = "\n\n".join(f"[{i}] {passage.strip()}" for i, passage in enumerate(knowledge, 1))
    return ("\n\nAnswer from the knowledge below when it is relevant. If it does not contain the answer, say "
            "you do not know rather than guessing.\n\nKnowledge:\n" + numbered)


def _message_payload(message: ChatMessage) -> dict[str, Any]:
    # Ollama renders the model's template around the content and tokenizes the result: text is defused so that
    # no message can close its turn and open a forged one (voicebot.llm.base.defuse).
    payload: dict[str, Any] = {"role": message.role, "content": defuse(message.content)}
    if message.tool_calls:
        payload["tool_calls"] = [{"function": {"name": c.name, "arguments": dict(c.arguments)}}
                                 for c in message.tool_calls]
    if message.tool_name:
        payload["tool_name"] = message.tool_name
    return payload


def build_chat_payload(messages: Sequence[ChatMessage], knowledge: Sequence[str]) -> list[dict[str, Any]]:
    """Messages for ``/api/chat``; knowledge joins the (first) system message, or becomes one.  A turn's
    :class:`SystemNote` is left out: Ollama joins every system message, wherever it stands, into the one system
    prompt, so each turn's note would change the prompt's start and pile up there, away from its question.  A
    :class:`ContextNote` is kept: it is the same on every turn of the conversation (a call's contact details), so
    it changes nothing from one turn to the next."""
    payload = [_message_payload(m) for m in messages if not isinstance(m, SystemNote) or isinstance(m, ContextNote)]
    section = defuse(knowledge_section(knowledge))
    if section:
        for item in payload:
            if item["role"] == "system":
                item["content"] += section
                break
        else:
            payload.insert(0, {"role": "system", "content": section.lstrip()})
    return payload


class OllamaLLM(LanguageModel):
    name = "ollama"
    supports_tools = True

    def __init__(self, settings: Settings, *, url: str | None = None, model: str | None = None,
                 timeout: float | None = None) -> None:
        self.url = (url or settings.ollama_url).rstrip("/")
        self._default_model = model or settings.ollama_model
        self.timeout = settings.ollama_timeout if timeout is None else timeout
        # connect/read/write/pool each bounded: a read timeout is "no byte for that long", which is what a
        # stalled stream looks like, while a long healthy stream is never cut.
        self._client = ollama.AsyncClient(host=self.url, timeout=httpx.Timeout(self.timeout))
        self._no_tools: set[str] = set()
        self._closed = False

    @property
    def default_model(self) -> str:
        return self._default_model

    async def list_models(self) -> list[str]:
        try:
            listing = await self._client.list()
        except Exception as exc:
            raise self._map_error(exc, self._default_model) from exc
        return [m.model for m in listing.models if m.model]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.close()  # type: ignore[no-untyped-call]

    async def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                     knowledge: Sequence[str] = (),
                     options: GenerationOptions | None = None) -> AsyncGenerator[LlmEvent, None]:
        opts = options or GenerationOptions()
        if self._closed:
            raise LlmUnavailable("the Ollama client is closed")
        model = opts.model or self._default_model
        payload = build_chat_payload(messages, knowledge)
        model_options: dict[str, Any] = {"temperature": opts.temperature, "num_predict": opts.max_tokens}
        if opts.stop:
            model_options["stop"] = list(opts.stop)
        offered = [t.to_json_schema_tool() for t in tools] if tools and model not in self._no_tools else None
        # Counted from the request on: prompt evaluation (before the first token) is when the model is busiest.
        self.in_flight += 1
        try:
            async for event in self._stream(model, payload, offered, model_options, opts):
                yield event
        finally:
            self.in_flight -= 1

    async def _stream(self, model: str, payload: list[dict[str, Any]], offered: list[dict[str, Any]] | None,
                      model_options: dict[str, Any], opts: GenerationOptions) -> AsyncGenerator[LlmEvent, None]:
        try:
            parts, first = await self._start(model, payload, offered, model_options, opts.json_schema)
        except ollama.ResponseError as exc:
            if not (offered and exc.status_code == 400 and "tool" in str(exc.error).lower()):
                raise self._map_error(exc, model) from exc
            log.warning("Ollama model %s does not support tools; answering without them", model)
            self._no_tools.add(model)
            try:
                parts, first = await self._start(model, payload, None, model_options, opts.json_schema)
            except LlmError:
                raise
            except Exception as retry_exc:
                raise self._map_error(retry_exc, model) from retry_exc
        except LlmError:
            raise
        except Exception as exc:
            raise self._map_error(exc, model) from exc

        ids = itertools.count(1)
        saw_tool_call = False
        part: Any = first
        try:
            while True:
                message = part.message
                if message is not None:
                    if message.content:
                        yield TextDelta(message.content)
                    for call in message.tool_calls or ():
                        saw_tool_call = True
                        yield ToolCall(name=call.function.name, arguments=_arguments(call.function.arguments),
                                       id=f"call_{next(ids)}")
                if part.done:
                    yield Done(_finish(part.done_reason, saw_tool_call), prompt_tokens=part.prompt_eval_count,
                               completion_tokens=part.eval_count)
                    return
                try:
                    part = await anext(parts)
                except StopAsyncIteration:
                    raise LlmError(f"Ollama stream for {model} ended before it was done") from None
        except LlmError:
            raise
        except Exception as exc:
            raise self._map_error(exc, model) from exc
        finally:
            # Closing the generator closes the HTTP response: Ollama stops generating when the client leaves.
            await parts.aclose()

    async def _start(self, model: str, payload: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                     model_options: dict[str, Any], schema: Mapping[str, Any] | None = None,
                     ) -> tuple[AsyncGenerator[Any, None], Any]:
        """Send the request and read the first part (the client sends nothing until iterated, and HTTP
        errors such as a missing model only surface there).  ``schema``: Ollama's structured output
        (``format`` = a JSON schema)."""
        parts = cast("AsyncGenerator[Any, None]", await self._client.chat(
            model=model, messages=payload, tools=tools, stream=True, options=model_options,
            format=dict(schema) if schema is not None else None))
        try:
            first = await anext(parts)
        except StopAsyncIteration:
            await parts.aclose()
            raise LlmError(f"Ollama sent an empty stream for {model}") from None
        except BaseException:
            await parts.aclose()
            raise
        return parts, first

    def _map_error(self, exc: Exception, model: str) -> LlmError:
        """Our error for a failure of the client."""
        if isinstance(exc, LlmError):
            return exc
        if isinstance(exc, ollama.ResponseError):
            text = str(exc.error)
            if exc.status_code == 404 and "not found" in text.lower():
                return LlmModelMissing(f"Ollama has no model {model!r} (pull it with `ollama pull {model}`)",
                                       field="llm_model")
            if exc.status_code == -1:
                return LlmError(f"Ollama reported an error mid-stream: {text}")
            return LlmError(f"Ollama answered HTTP {exc.status_code}: {text}")
        if isinstance(exc, httpx.TimeoutException):
            return LlmTimeout(f"Ollama at {self.url} did not answer within {self.timeout:g}s")
        if isinstance(exc, ConnectionError | httpx.TransportError):
            return LlmUnavailable(f"Ollama is not reachable at {self.url}")
        if isinstance(exc, json.JSONDecodeError | ValidationError | TypeError | KeyError):
            return LlmError(f"Ollama sent a malformed response: {type(exc).__name__}")
        return LlmError(f"Ollama request failed: {type(exc).__name__}: {exc}")


def _arguments(raw: Any) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, str):  # some OpenAI-compatible servers send JSON text
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LlmError("Ollama sent tool arguments that are not JSON") from exc
        if isinstance(value, dict):
            return value
    raise LlmError("Ollama sent tool arguments that are not an object")


def _finish(reason: str | None, saw_tool_call: bool) -> FinishReason:
    if saw_tool_call:
        return "tool_calls"
    return "length" if reason == "length" else "stop"


async def probe(url: str, *, wait: float = 1.5) -> list[str] | None:
    """Model names of the Ollama server at ``url``, or None when it does not answer within ``wait`` s."""
    client = ollama.AsyncClient(host=url, timeout=httpx.Timeout(wait))
    try:
        listing = await client.list()
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValidationError, json.JSONDecodeError):
        return None
    finally:
        await client.close()  # type: ignore[no-untyped-call]
    return [m.model for m in listing.models if m.model]
