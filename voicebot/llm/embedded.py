"""Embedded backend: llama.cpp (``llama-cpp-python``) running a local GGUF file, no server needed.

The model is loaded once and every call into llama.cpp runs on one dedicated worker thread, never on the event
loop (llama.cpp contexts are not thread-safe, and on a small machine one generation at a time is also the
fastest).  Tokens travel to the loop through ``call_soon_threadsafe``; a ``threading.Event`` checked after
every token stops generation when the consumer is cancelled (barge-in).

Prompting: when the GGUF carries a chat template we use it (``create_chat_completion``).  The default model,
base Gemma 3 270M, has none, and chat-style prompts make a base model echo; what works is a *few-shot
transcript*: a fixed preamble with example calls to another business, then this agent's instructions,
knowledge and the conversation as ``Caller:``/``Agent:`` lines, ending in ``Agent:``; generation stops at the
newline.  Such base models decode greedily (temperature 0) whatever the agent's temperature: sampling a
270M base model mostly adds errors.  The fixed preamble comes first so llama.cpp reuses its evaluated prefix
across requests (only the tail of each prompt is evaluated).  No tool calls: ``supports_tools`` is False.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicebot.config import Settings
from voicebot.errors import LlmError, LlmModelMissing, LlmUnavailable
from voicebot.llm.base import (
    ChatMessage,
    Done,
    FinishReason,
    GenerationOptions,
    LanguageModel,
    LlmEvent,
    TextDelta,
    ToolSpec,
)

log = logging.getLogger(__name__)

DEFAULT_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"

# Example calls to two made-up businesses.  Tuned on Gemma 3 270M (base): one fact per knowledge line, answers
# that restate the fact as a sentence, an identity question so the persona's name is used, and a "closed" day
# so negative answers are learnt.  An "I don't know" example was tried and made the model refuse real facts.
FEW_SHOT_PREAMBLE = """\
Below are phone calls. The agent follows its instructions and answers in one short sentence using the facts \
in the knowledge.

Instructions: You are Max, the phone assistant of Green Leaf Cafe.
Knowledge:
Green Leaf Cafe sells coffee and cake.
We are open Monday to Saturday from 7 am to 3 pm.
On Sunday we are closed.
Our address is 8 Oak Avenue.
A coffee costs 3 dollars.

Caller: Who am I talking to?
Agent: This is Max from Green Leaf Cafe.
Caller: Where are you?
Agent: Our address is 8 Oak Avenue.
Caller: Are you open on Sunday?
Agent: No, on Sunday we are closed.
Caller: How much is a coffee?
Agent: A coffee costs 3 dollars.
"""

TRANSCRIPT_STOP = ("\n", "Caller:")
_PERSONA_MAX_CHARS = 600
_WS_RE = re.compile(r"[ \t\r\f\v]+")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def default_gguf_path(settings: Settings) -> Path:
    """``EVA_LLM_MODEL_PATH`` or the GGUF that ``eva setup`` assembled from the packaged Gemma 3 270M."""
    if settings.llm_model_path:
        return Path(settings.llm_model_path).expanduser()
    return settings.models_dir / DEFAULT_GGUF_NAME


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _passage_lines(text: str) -> list[str]:
    """One sentence per line: the small model copies facts best from one-fact lines (knowledge chunks arrive
    as sentences joined by spaces).  Blank lines would look like the end of the knowledge block; markdown
    heading marks are noise."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = _WS_RE.sub(" ", raw).strip().lstrip("#").strip()
        lines.extend(part.strip() for part in _SENTENCE_END_RE.split(line) if part.strip())
    return lines


def build_transcript_prompt(persona: str, knowledge: Sequence[str], history: Sequence[ChatMessage],
                            question: str) -> str:
    """The few-shot transcript prompt for a base model (see the module docstring)."""
    parts = [FEW_SHOT_PREAMBLE, "\n"]
    persona_line = _one_line(persona)[:_PERSONA_MAX_CHARS]
    if persona_line:
        parts.append(f"Instructions: {persona_line}\n")
    parts.append("Knowledge:\n")
    for passage in knowledge:
        for line in _passage_lines(passage):
            parts.append(line + "\n")
    parts.append("\n")
    for message in history:
        text = _one_line(message.content)
        if not text:
            continue
        if message.role == "user":
            parts.append(f"Caller: {text}\n")
        elif message.role == "assistant":
            parts.append(f"Agent: {text}\n")
    parts.append(f"Caller: {_one_line(question)}\nAgent:")
    return "".join(parts)


def _split_messages(messages: Sequence[ChatMessage]) -> tuple[str, list[ChatMessage], str]:
    """→ (instructions from all system messages, earlier user/assistant turns, the last user message).

    All system messages (persona, then channel guidance) form the one ``Instructions:`` line: measured on
    the demo questions, the base model answered more of them right with the guidance than without."""
    persona = " ".join(m.content for m in messages if m.role == "system")
    turns = [m for m in messages if m.role in ("user", "assistant")]
    question = ""
    if turns and turns[-1].role == "user":
        question = turns[-1].content
        turns = turns[:-1]
    return persona, turns, question


@dataclass(frozen=True)
class _Job:
    """One generation request handed to the worker thread."""

    messages: list[ChatMessage]
    knowledge: list[str]
    options: GenerationOptions
    stop: threading.Event
    emit: Callable[[LlmEvent | BaseException], None]


@dataclass(frozen=True)
class _Prompt:
    persona: str
    knowledge: list[str]
    history: list[ChatMessage]
    question: str


class EmbeddedLLM(LanguageModel):
    """llama.cpp in-process.  Create with :meth:`load` (loads the GGUF off the event loop)."""

    name = "embedded"
    supports_tools = False

    def __init__(self, model_path: Path, *, n_ctx: int = 4096, n_threads: int | None = None) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        # Voice calls run STT, LLM and TTS one after another, so the LLM may use the cores it finds; beyond
        # four threads a 270M model gains nothing.
        self.n_threads = n_threads or max(1, min(os.cpu_count() or 1, 4))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eva-llm")
        self._llama: Any = None
        self._chat_template = False
        self._closed = False

    @property
    def default_model(self) -> str:
        return self.model_path.stem

    @classmethod
    async def load(cls, settings: Settings, **kwargs: Any) -> EmbeddedLLM:
        """Load ``default_gguf_path(settings)`` off the event loop.  Raises LlmModelMissing when the file does
        not exist, LlmUnavailable when llama.cpp cannot load it."""
        llm = cls._for(settings, **kwargs)
        await asyncio.get_running_loop().run_in_executor(llm._executor, llm._load)
        return llm

    @classmethod
    def open(cls, settings: Settings, **kwargs: Any) -> EmbeddedLLM:
        """Blocking variant of :meth:`load` for code without an event loop (tests' session fixtures, tools).
        The instance still works from any event loop afterwards."""
        llm = cls._for(settings, **kwargs)
        llm._executor.submit(llm._load).result()
        return llm

    @classmethod
    def _for(cls, settings: Settings, **kwargs: Any) -> EmbeddedLLM:
        path = default_gguf_path(settings)
        if not path.is_file():
            raise LlmModelMissing(f"GGUF model not found at {path}: run `eva setup` or set "
                                  "EVA_LLM_MODEL_PATH", field="llm_model_path")
        return cls(path, **kwargs)

    def _load(self) -> None:
        from llama_cpp import Llama

        try:
            self._llama = Llama(model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                                n_threads_batch=self.n_threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LlmUnavailable(f"cannot load GGUF model {self.model_path.name}: {exc}") from exc
        template = self._llama.metadata.get("tokenizer.chat_template", "")
        self._chat_template = bool(template and template.strip())
        log.info("embedded LLM loaded: %s (%s, %d threads)", self.model_path.name,
                 "chat template" if self._chat_template else "no chat template: few-shot transcript prompt",
                 self.n_threads)

    @property
    def uses_chat_template(self) -> bool:
        return self._chat_template

    async def list_models(self) -> list[str]:
        return [self.default_model]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        # Free the model on its own thread, after any generation still running there has seen its stop flag.
        await loop.run_in_executor(self._executor, self._free)
        self._executor.shutdown(wait=False)

    def close_sync(self) -> None:
        """Blocking :meth:`close` for code without an event loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._executor.submit(self._free).result()
        except RuntimeError:
            # The executor is already shut down (interpreter exit): no generation can run, free it here.
            self._free()
        self._executor.shutdown(wait=True)

    def _free(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    # ------------------------------------------------------------------ generation
    async def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                     knowledge: Sequence[str] = (),
                     options: GenerationOptions | None = None) -> AsyncGenerator[LlmEvent, None]:
        opts = options or GenerationOptions()
        if self._closed or self._llama is None:
            raise LlmUnavailable("the embedded model is not loaded")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[LlmEvent | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: LlmEvent | BaseException) -> None:
            if stop.is_set():
                return
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
                loop.call_soon_threadsafe(queue.put_nowait, item)

        job = _Job(list(messages), list(knowledge), opts, stop, emit)
        loop.run_in_executor(self._executor, self._generate, job)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, LlmError):
                    raise item
                if isinstance(item, BaseException):
                    raise LlmError(f"embedded generation failed: {type(item).__name__}: {item}") from item
                yield item
                if isinstance(item, Done):
                    return
        finally:
            # Cancelled, closed early or finished: the worker stops at its next token.
            stop.set()

    def _generate(self, job: _Job) -> None:
        try:
            if job.stop.is_set():  # cancelled while waiting for the worker thread
                return
            llama = self._llama
            if llama is None:
                job.emit(LlmUnavailable("the embedded model was closed"))
                return
            if self._chat_template:
                self._generate_chat(llama, job)
            else:
                self._generate_transcript(llama, job)
        except Exception as exc:  # any failure is reported to the consumer, never lost in the executor
            job.emit(exc)

    def _generate_transcript(self, llama: Any, job: _Job) -> None:
        from llama_cpp import StoppingCriteriaList

        opts, stop, emit = job.options, job.stop, job.emit
        persona, history, question = _split_messages(job.messages)
        prompt_tokens = self._fit_transcript(llama, _Prompt(persona, job.knowledge, history, question),
                                             opts.max_tokens)
        counted = {"tokens": len(prompt_tokens)}

        def stopping(input_ids: Any, _logits: Any) -> bool:
            counted["tokens"] = len(input_ids)
            return stop.is_set()

        chunks: Iterator[dict[str, Any]] = llama.create_completion(
            prompt_tokens, max_tokens=opts.max_tokens, temperature=0.0, stream=True,
            stop=[*TRANSCRIPT_STOP, *opts.stop], stopping_criteria=StoppingCriteriaList([stopping]))
        finish: str | None = None
        first = True
        for chunk in chunks:
            if stop.is_set():
                return
            choice = chunk["choices"][0]
            text: str = choice.get("text") or ""
            if first and text:
                text = text.lstrip()  # the space after "Agent:"
                first = not text
            if text:
                emit(TextDelta(text))
            finish = choice.get("finish_reason") or finish
        if stop.is_set():
            return
        # The stopping criterion sees the evaluated ids, which lag one behind the last sampled token.
        generated = min(opts.max_tokens, max(0, counted["tokens"] - len(prompt_tokens) + 1))
        emit(Done(_finish(finish), prompt_tokens=len(prompt_tokens), completion_tokens=generated))

    def _fit_transcript(self, llama: Any, parts: _Prompt, max_tokens: int) -> list[int]:
        """Tokenized prompt that leaves room for ``max_tokens``: drop the oldest turns first, then the
        least relevant (last) knowledge passages, then trim the question."""
        budget = self.n_ctx - max_tokens - 8
        persona, question = parts.persona, parts.question
        history = list(parts.history)
        knowledge = list(parts.knowledge)
        while True:
            prompt = build_transcript_prompt(persona, knowledge, history, question)
            tokens: list[int] = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
            if len(tokens) <= budget:
                return tokens
            if history:
                history = history[2:] if len(history) > 1 else []
            elif knowledge:
                knowledge.pop()
            elif len(question) > 200:
                question = question[-(len(question) // 2):]
            else:
                raise LlmError(f"prompt does not fit the model context ({self.n_ctx} tokens) with "
                               f"max_tokens={max_tokens}")

    def _generate_chat(self, llama: Any, job: _Job) -> None:
        messages, knowledge, opts, stop, emit = job.messages, job.knowledge, job.options, job.stop, job.emit
        payload: list[dict[str, Any]] = []
        knowledge_text = "\n\n".join(knowledge)
        has_system = any(m.role == "system" for m in messages)
        if knowledge_text and not has_system:
            payload.append({"role": "system", "content": f"Knowledge:\n{knowledge_text}"})
        for message in messages:
            if message.role == "tool":
                continue  # no tools here, so no tool results to show
            content = message.content
            if message.role == "system" and knowledge_text:
                content = f"{content}\n\nKnowledge:\n{knowledge_text}"
                knowledge_text = ""
            payload.append({"role": message.role, "content": content})
        chunks: Iterator[dict[str, Any]] = llama.create_chat_completion(
            messages=payload, max_tokens=opts.max_tokens, temperature=opts.temperature, stream=True,
            stop=list(opts.stop) or None)
        finish: str | None = None
        pieces = 0
        for chunk in chunks:
            if stop.is_set():
                return
            choice = chunk["choices"][0]
            text = (choice.get("delta") or {}).get("content") or ""
            if text:
                pieces += 1
                emit(TextDelta(text))
            finish = choice.get("finish_reason") or finish
        if stop.is_set():
            return
        # Streamed chat chunks carry one token each, so the count of non-empty pieces is the token count.
        emit(Done(_finish(finish), prompt_tokens=None, completion_tokens=pieces))


def _finish(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"
