"""Embedded backend: llama.cpp (``llama-cpp-python``) running a local GGUF file, no server needed.

The model is loaded once and every call into llama.cpp runs on one dedicated worker thread, never on the event
loop (llama.cpp contexts are not thread-safe, and on a small machine one generation at a time is also the
fastest).  Tokens travel to the loop through ``call_soon_threadsafe``; a ``threading.Event`` checked after
every token stops generation when the consumer is cancelled (barge-in).

Prompting depends on the GGUF.  The default, **Qwen2.5-Coder-0.5B-Instruct** (ChatML chat template), gets
our own ChatML rendering (``voicebot.llm.chatml``): one stable system block per agent (persona, channel
guidance, grounding rule, the knowledge) followed by the append-only conversation, so that with the KV
snapshots of ``voicebot.llm.prefix_cache`` each prompt token is evaluated once: a turn evaluates only the
caller's new words, and a new call of an agent starts from its pinned prefix.  Every ``Done`` reports
``prompt_tokens_evaluated`` and ``prompt_eval_ms`` (also the ``eva_llm_prompt_*`` metrics).  Tool signatures
are not put in its prompt by default (``tools_in_prompt``; measured: they made the 0.5B model answer worse);
when they are, Qwen's textual ``<tool_call>`` JSON is parsed into :class:`ToolCall` events.  Other chat
templates go through llama-cpp-python's ``create_chat_completion`` (no tools, no snapshots).

A base model without a template (Gemma 3 270M, the earlier default, kept as the latency baseline) echoes
chat prompts; what works is a *few-shot transcript*: a fixed preamble with example calls to another
business, then this agent's instructions, knowledge and the conversation as ``Caller:``/``Agent:`` lines,
ending in ``Agent:``; generation stops at the newline.  Such base models decode greedily (temperature 0)
whatever the agent's temperature: sampling a 270M base model mostly adds errors.  The fixed preamble comes
first so llama.cpp reuses its evaluated prefix across requests.  No tool calls there.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    ToolCall,
    ToolSpec,
    defuse,
)
from voicebot.llm.chatml import STOP, ToolCallParser, build_chat_prompt, instruction_count
from voicebot.llm.prefix_cache import PrefixCache, common_prefix, restore_sequence, snapshot_sequence
from voicebot.llm.qwen_gguf import GGUF_NAME
from voicebot.llm.speculative import MAX_DRAFT, PromptLookup, Sampling, sample, verify
from voicebot.media.priority import background_thread, llm_threads, working
from voicebot.metrics import LLM_PROMPT_EVAL_SECONDS, LLM_PROMPT_TOKENS_EVALUATED

log = logging.getLogger(__name__)

DEFAULT_GGUF_NAME = GGUF_NAME
"""The default model: Qwen2.5-Coder-0.5B-Instruct (chat template, tool calls), assembled by ``eva setup``."""
GEMMA_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
"""The earlier default, base Gemma 3 270M (few-shot transcript path): kept as the latency baseline and for
fast tests; choose it with ``EVA_LLM_MODEL_PATH``."""

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
    """``EVA_LLM_MODEL_PATH`` or the GGUF that ``eva setup`` assembled and verified (Qwen2.5 0.5B Instruct)."""
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
    the demo questions, the base model answered more of them right with the guidance than without.  A system
    note later in the conversation (one turn's relevant facts) is left out: the transcript format has no place
    for it that would keep the cached instructions line stable."""
    lead = instruction_count(messages)
    persona = " ".join(m.content for m in messages[:lead])
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
    tools: list[ToolSpec]
    options: GenerationOptions
    stop: threading.Event
    emit: Callable[[LlmEvent | BaseException], None]


@dataclass
class _Running:
    """A generation the scheduler holds: its steps and, while paused, its saved KV state."""

    job: _Job
    steps: Iterator[bool]
    saved: tuple[tuple[int, ...], bytes] | None = None
    since: float = 0.0
    """When it last got the context (for the time slices of replies past their first sentence)."""


_SLICE_S = 0.4
"""Replies past their first sentence take turns this long each: a paused one is never starved by a busy line."""
# The first sentence is out once text follows its mark: the voice loop (and the grounding guard) let a sentence
# go only when the whitespace after it has come, and "9." may still become "9.50".
_SENTENCE_DONE_RE = re.compile(r"\S[.!?]+\s+\S|\S\s*\n\s*\S")
_FIRST_SENTENCE_CHARS = 160
"""A first sentence longer than this counts as said: the voice loop has long started speaking it."""


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

    def __init__(self, model_path: Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 tools_in_prompt: bool = False, speculative: bool = True, seed: int | None = None) -> None:
        self.model_path = Path(model_path)
        # Off by default: with tool signatures in its prompt Qwen2.5 0.5B answered worse (it claimed a bike
        # shop repairs cars) and never called a tool when it should; the agent's decision layer
        # (voicebot.agent.decisions) transfers and hangs up instead.  On, calls are parsed from its text.
        self.tools_in_prompt = tools_in_prompt
        # Prompt-lookup speculative decoding for chat replies (voicebot.llm.speculative): the same replies in
        # fewer forward passes.  ``drafted``/``accepted`` count guessed tokens and those the model kept.
        self.speculative = speculative
        self.drafted = 0
        self.accepted = 0
        self._rng = np.random.default_rng(seed)
        self._stop_ids: frozenset[int] = frozenset()
        self._lock = threading.Lock()
        self._pending: deque[_Job] = deque()
        self._scheduling = False
        self.preemptions = 0
        """Replies paused so another caller's first sentence could come first."""
        self.first_sentences_first = True
        """Pause a reply past its first sentence for a newly asked one (see :meth:`_schedule`); off only to
        measure what it buys (``bench/capacity.py --compare``)."""
        self.n_ctx = n_ctx
        # Beyond four threads these small models gain nothing.  Unless fixed here, the threads follow the machine's
        # load before every forward pass: all cores while the LLM works alone, half while Whisper or Piper works
        # (voicebot.media.priority.llm_threads: two spinning thread teams on two cores halve both).
        self.adaptive_threads = not n_threads
        self.n_threads = n_threads or llm_threads()
        self._threads_now = self.n_threads
        # The model loads on this thread, so llama.cpp's own threads inherit its lower priority
        # (voicebot.media.priority): the calls' media clocks run first.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eva-llm",
                                            initializer=background_thread)
        self._llama: Any = None
        self._chat_template = False
        self._grammars: dict[str, Any] = {}
        self._chatml = False
        self._closed = False
        self._cache = PrefixCache()
        self.last_prompt_eval: tuple[int, float] = (0, 0.0)
        """(prompt tokens evaluated, seconds) of the last chat-template request, for tests and benchmarks."""

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
        kwargs.setdefault("speculative", settings.llm_speculative)
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
        # Chat models get our ChatML rendering, which offers tools and parses Qwen-style calls.
        self._chatml = "<|im_start|>" in template
        # The tokens that end a reply: every end-of-generation token llama.cpp knows (for Qwen2.5-Coder also the
        # fill-in-the-middle separators that create_completion stops at), and ChatML's ends.
        import llama_cpp

        vocab = self._llama._model.vocab
        ends = {t for t in range(int(self._llama.n_vocab())) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        ends.add(int(self._llama.token_eos()))
        for marker in STOP:
            ids = self._llama.tokenize(marker.encode("utf-8"), add_bos=False, special=True)
            if len(ids) == 1:
                ends.add(int(ids[0]))
        self._stop_ids = frozenset(ends)
        self.supports_tools = self._chatml and self.tools_in_prompt
        # The agent core sends a stable knowledge block to a model that caches prompt prefixes.
        self.caches_prefix = self._chatml
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

    def _fit_threads(self, llama: Any) -> None:
        """Before a forward pass: the threads the machine's load calls for (see ``__init__``)."""
        if not self.adaptive_threads:
            return
        wanted = llm_threads()
        if wanted != self._threads_now:
            llama._ctx.set_n_threads(wanted, wanted)
            self._threads_now = wanted

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

        # Tools only reach chat-template models; the few-shot transcript has no way to call them.
        job = _Job(list(messages), list(knowledge), list(tools) if self.supports_tools else [], opts, stop,
                   emit)
        self.in_flight += 1
        try:
            self._submit(job)
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
            self.in_flight -= 1

    # ------------------------------------------------------------------ scheduling on the worker thread
    def _submit(self, job: _Job) -> None:
        """Queue ``job``; the worker thread runs the scheduler while any job is queued or running."""
        with self._lock:
            self._pending.append(job)
            if self._scheduling:
                return
            self._scheduling = True
        try:
            self._executor.submit(self._schedule)
        except RuntimeError as exc:  # the executor is shut down: the model was closed
            with self._lock:
                self._scheduling = False
                self._pending.clear()
            raise LlmUnavailable("the embedded model is not loaded") from exc

    def _schedule(self) -> None:
        """Run the queued generations, **first sentences first**.

        One context, one generation at a time (on two cores that is also the fastest), but a reply is not run
        to its end while another caller waits for their first words: a speculative chat reply past its first
        sentence is paused at the next forward pass when a new request is queued (its KV state saved, ≈12 KiB
        per token, a few ms) and the newcomer runs; replies past their first sentence take turns of
        ``_SLICE_S`` each, oldest paused first, so none starves.  A caller hears the paused reply's first
        sentence meanwhile.  Other generations (grammar-bound analysis, other templates) run through."""
        current: _Running | None = None
        paused: deque[_Running] = deque()
        try:
            # Whisper and Piper take their share of the cores while the LLM works (voicebot.media.priority).
            with working("llm"):
                while True:
                    if current is None:
                        with self._lock:
                            job = self._pending.popleft() if self._pending else None
                            if job is None and not paused:
                                self._scheduling = False
                                return
                        if job is not None:
                            current = _Running(job, self._steps(job))
                        else:
                            current = paused.popleft()
                            if current.job.stop.is_set():  # its consumer went away while it waited
                                current = None
                                continue
                        current.since = time.monotonic()
                    try:
                        self._resume(current)
                        may_pause = next(current.steps)
                        # A newly asked reply goes first; replies past their first sentence take turns, a slice
                        # each.
                        switch = may_pause and self.first_sentences_first and (
                            self._waiting() or (bool(paused) and time.monotonic() - current.since >= _SLICE_S))
                        if switch:
                            self._park(current)
                    except StopIteration:
                        current = None
                        continue
                    except Exception as exc:  # any failure reaches the consumer, never lost in the executor
                        current.job.emit(exc)
                        current = None
                        continue
                    if switch:
                        paused.append(current)
                        self.preemptions += 1
                        current = None
        except BaseException as exc:  # never leave queued callers waiting on a scheduler that is gone
            failure = LlmUnavailable(f"the embedded model's scheduler stopped: {type(exc).__name__}")
            with self._lock:
                orphans = [*self._pending, *(r.job for r in paused), *([current.job] if current else [])]
                self._pending.clear()
                self._scheduling = False
            for job in orphans:
                job.emit(failure)
            raise

    def _waiting(self) -> bool:
        """A request is queued whose caller still waits (a cancelled one does not count: it will be dropped)."""
        with self._lock:
            while self._pending and self._pending[0].stop.is_set():
                self._pending.popleft()
            return any(not job.stop.is_set() for job in self._pending)

    def _park(self, running: _Running) -> None:
        """Save the running reply's KV state so another may use the context (raises when llama.cpp cannot)."""
        llama = self._llama
        if llama is None:
            raise LlmUnavailable("the embedded model was closed")
        saved = snapshot_sequence(llama)
        if saved is None:
            raise LlmError("could not save a paused reply's state")
        running.saved = saved

    def _resume(self, running: _Running) -> None:
        """Give a paused reply its KV state back (a no-op for one that was not paused)."""
        if running.saved is None:
            return
        llama = self._llama
        if llama is None:
            raise LlmUnavailable("the embedded model was closed")
        saved, running.saved = running.saved, None
        restore_sequence(llama, *saved)

    def _steps(self, job: _Job) -> Iterator[bool]:
        """One generation as steps for :meth:`_schedule`: each ``next`` does some work and says whether the
        generation may be paused there."""
        if job.stop.is_set():  # cancelled while queued
            return
        llama = self._llama
        if llama is None:
            job.emit(LlmUnavailable("the embedded model was closed"))
            return
        if self._chatml:
            yield from self._generate_chat(llama, job)
        elif self._chat_template:
            self._generate_template(llama, job)
        else:
            self._generate_transcript(llama, job)

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

        self._fit_threads(llama)
        chunks: Iterator[dict[str, Any]] = llama.create_completion(
            prompt_tokens, max_tokens=opts.max_tokens, temperature=0.0, stream=True,
            stop=[*TRANSCRIPT_STOP, *opts.stop], stopping_criteria=StoppingCriteriaList([stopping]),
            grammar=self._grammar(opts.json_schema))
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

    def _grammar(self, schema: Mapping[str, Any] | None) -> Any:
        """The llama.cpp grammar that makes sampling follow ``schema`` (None: free text).  Built once per schema:
        the analysis worker asks with the same one for every message."""
        if schema is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            try:
                # In the schema's own property order: the model writes the fields in it.
                grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            except Exception as exc:  # llama.cpp's converter raises plain errors on schemas it cannot express
                raise LlmError(f"the JSON schema cannot be turned into a grammar: {exc}") from exc
            if len(self._grammars) >= 16:
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = grammar
        return grammar

    def _generate_chat(self, llama: Any, job: _Job) -> Iterator[bool]:
        """Chat-template models (the default Qwen): our own ChatML rendering, KV snapshots so only new
        tokens are evaluated, and Qwen's textual tool calls parsed into :class:`ToolCall` events.  Yields after
        each forward pass whether the reply may be paused there (speculative decoding, first sentence out)."""
        from llama_cpp import StoppingCriteriaList

        opts, stop, emit = job.options, job.stop, job.emit
        prompt = build_chat_prompt(job.messages, job.knowledge, job.tools, opts.language)
        prefix_tokens: list[int] = llama.tokenize(prompt.prefix.encode("utf-8"), add_bos=False, special=True)
        tokens: list[int] = llama.tokenize(prompt.text.encode("utf-8"), add_bos=False, special=True)
        if tokens[:len(prefix_tokens)] != prefix_tokens:  # a merge across the boundary (never seen): no pin
            prefix_tokens = []
        elif opts.json_schema is not None and len(job.messages) > 1:
            # Bookkeeping (message analysis): everything before the message analysed — instructions and example
            # turns, the same for every message — is pinned, so after a call has used the context only the new
            # message's own tokens are evaluated.
            head = build_chat_prompt(job.messages[:-1], job.knowledge, job.tools, opts.language)
            head_tokens: list[int] = llama.tokenize(head.text.encode("utf-8"), add_bos=False, special=True)
            prefix_tokens = tokens[:max(len(prefix_tokens), common_prefix(head_tokens, tokens))]
        if len(tokens) + opts.max_tokens > self.n_ctx:
            raise LlmError(f"prompt of {len(tokens)} tokens does not fit the model context ({self.n_ctx} "
                           f"tokens) with max_tokens={opts.max_tokens}")
        started = time.monotonic()
        evaluated = self._prepare_context(llama, tokens, prefix_tokens)
        held = common_prefix(llama.input_ids[:int(llama.n_tokens)], tokens)
        # llama.cpp re-evaluates at least the last prompt token (for its logits).
        evaluated += len(tokens) - min(held, len(tokens) - 1)
        counted: dict[str, float] = {"tokens": len(tokens), "first": 0.0}

        def stopping(input_ids: Any, _logits: Any) -> bool:
            if not counted["first"]:
                counted["first"] = time.monotonic()
            counted["tokens"] = len(input_ids)
            return stop.is_set()

        pieces: Iterator[tuple[str, str | None]]
        resumable = self.speculative and opts.json_schema is None and not opts.stop
        if resumable:
            pieces = self._decode_speculative(llama, tokens, opts, stop, counted)
        else:
            self._fit_threads(llama)  # llama-cpp-python's own loop: the load as it starts
            chunks: Iterator[dict[str, Any]] = llama.create_completion(
                tokens, max_tokens=opts.max_tokens, temperature=opts.temperature, stream=True,
                stop=[*STOP, *opts.stop], stopping_criteria=StoppingCriteriaList([stopping]),
                grammar=self._grammar(opts.json_schema))
            pieces = ((c["choices"][0].get("text") or "", c["choices"][0].get("finish_reason")) for c in chunks)
        parser = ToolCallParser() if job.tools and opts.json_schema is None else None
        finish: str | None = None
        called = False
        first_out, first = False, ""
        for text, ended in pieces:
            if stop.is_set():
                return
            if text:
                for event in parser.push(text) if parser else [TextDelta(text)]:
                    called = called or isinstance(event, ToolCall)
                    emit(event)
                if not first_out:
                    first += text
                    first_out = bool(_SENTENCE_DONE_RE.search(first)) or len(first) >= _FIRST_SENTENCE_CHARS
            finish = ended or finish
            # Past its first sentence, a reply may wait while another caller's first words are generated (never
            # at its last piece: the voice loop speaks the last sentence when the reply is done).
            yield resumable and first_out and ended is None
        if stop.is_set():
            return
        for event in parser.finish() if parser else []:
            called = called or isinstance(event, ToolCall)
            emit(event)
        eval_seconds = (counted["first"] or time.monotonic()) - started
        self.last_prompt_eval = (evaluated, eval_seconds)
        LLM_PROMPT_TOKENS_EVALUATED.observe(evaluated, backend=self.name)
        LLM_PROMPT_EVAL_SECONDS.observe(eval_seconds, backend=self.name)
        generated = min(opts.max_tokens, max(0, int(counted["tokens"]) - len(tokens) + 1))
        reason: FinishReason = "tool_calls" if called else _finish(finish)
        emit(Done(reason, prompt_tokens=len(tokens), completion_tokens=generated,
                  prompt_tokens_evaluated=evaluated, prompt_eval_ms=round(eval_seconds * 1000.0, 1)))
        # After the reply, off the caller's clock: keep this call's state for its next turn (not for bookkeeping
        # replies: a message's analysis has no next turn, and its snapshot would evict a call's).
        if opts.json_schema is None:
            self._cache.save(llama)

    def _decode_speculative(self, llama: Any, tokens: list[int], opts: GenerationOptions, stop: threading.Event,
                            counted: dict[str, float]) -> Iterator[tuple[str, str | None]]:
        """Generate after ``tokens`` with prompt-lookup speculative decoding (``voicebot.llm.speculative``):
        yields (text, finish reason or None).  Keeps ``llama.input_ids``/``n_tokens`` and the KV cache exactly
        in step with the tokens kept, so the prefix cache and the next turn's prefix match see a normal context."""
        import llama_cpp

        ctx = llama._ctx
        n_vocab = int(llama.n_vocab())
        sampling = Sampling(temperature=max(0.0, float(opts.temperature)))
        rng = self._rng

        def row(i: int) -> Any:
            pointer = llama_cpp.llama_get_logits_ith(ctx.ctx, i)
            return np.ctypeslib.as_array(pointer, shape=(n_vocab,)).copy()

        # The prompt: what the context does not hold, and at least the last token (for its logits).
        held = min(common_prefix(llama.input_ids[:int(llama.n_tokens)], tokens), len(tokens) - 1)
        llama.n_tokens = held
        self._fit_threads(llama)
        llama.eval(tokens[held:])
        pending = [sample(row(-1), sampling, rng)]
        counted["first"] = time.monotonic()
        lookup = PromptLookup(tokens)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated = 0
        while True:
            for token in pending:
                if token in self._stop_ids:
                    counted["tokens"] = len(tokens) + generated  # the end token counts, as llama.cpp's
                    yield decoder.decode(b"", final=True), "stop"
                    return
                generated += 1
                lookup.extend((token,))
                yield decoder.decode(llama.detokenize([token])), None
                if generated >= opts.max_tokens:
                    counted["tokens"] = len(tokens) + generated - 1
                    yield decoder.decode(b"", final=True), "length"
                    return
            if stop.is_set():
                return
            last = pending[-1]  # drawn, not yet evaluated
            n_past = int(llama.n_tokens)
            room = self.n_ctx - n_past - 2
            if room < 0:
                counted["tokens"] = len(tokens) + generated - 1
                yield decoder.decode(b"", final=True), "length"
                return
            draft = lookup.draft(min(MAX_DRAFT, opts.max_tokens - generated, room))
            batch = [last, *draft]
            llama._batch.set_batch(batch, n_past=n_past, logits_all=True)
            self._fit_threads(llama)
            ctx.decode(llama._batch)
            llama.input_ids[n_past:n_past + len(batch)] = batch
            out = verify([row(i) for i in range(len(batch))], draft, sampling, rng)
            kept = len(out) - 1  # guesses accepted: their KV entries stay
            for j, token in enumerate(out):
                if token in self._stop_ids:  # nothing after the end is kept, nor the end itself
                    out, kept = out[:j + 1], min(kept, j)
                    break
            llama.n_tokens = n_past + 1 + kept
            ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
            # The logits left in the context are a guess's, not the last kept token's: llama-cpp-python must
            # evaluate again before it samples from this context (as after a snapshot restore).
            llama._requires_eval = True
            self.drafted += len(draft)
            self.accepted += kept
            pending = out

    def _prepare_context(self, llama: Any, tokens: list[int], prefix_tokens: list[int]) -> int:
        """Bring the context as close to ``tokens`` as the cache allows; returns the tokens evaluated here
        (an agent prefix seen for the first time is evaluated and pinned)."""
        held = common_prefix(llama.input_ids[:int(llama.n_tokens)], tokens)
        snapshot, covered = self._cache.best(tokens)
        if snapshot is not None and covered > held:
            self._cache.restore(llama, snapshot)
            held = covered
        if not prefix_tokens or held >= len(prefix_tokens):
            return 0
        # A new agent prefix: evaluate it on its own and pin it, so every later call of this agent starts
        # from it whatever ran in between.
        llama.n_tokens = held
        self._fit_threads(llama)
        llama.eval(prefix_tokens[held:])
        self._cache.save(llama, pinned=True)
        return len(prefix_tokens) - held

    def _generate_template(self, llama: Any, job: _Job) -> None:
        """Other chat templates: llama-cpp-python renders them (no tool calls, no snapshots)."""
        messages, knowledge, opts, stop, emit = job.messages, job.knowledge, job.options, job.stop, job.emit
        payload: list[dict[str, Any]] = []
        knowledge_text = defuse("\n\n".join(knowledge))
        has_system = any(m.role == "system" for m in messages)
        if knowledge_text and not has_system:
            payload.append({"role": "system", "content": f"Knowledge:\n{knowledge_text}"})
        for message in messages:
            if message.role == "tool":
                continue  # no tools here, so no tool results to show
            content = defuse(message.content)  # the template is rendered and tokenized with its special tokens
            if message.role == "system" and knowledge_text:
                content = f"{content}\n\nKnowledge:\n{knowledge_text}"
                knowledge_text = ""
            payload.append({"role": message.role, "content": content})
        self._fit_threads(llama)
        chunks: Iterator[dict[str, Any]] = llama.create_chat_completion(
            messages=payload, max_tokens=opts.max_tokens, temperature=opts.temperature, stream=True,
            stop=list(opts.stop) or None, grammar=self._grammar(opts.json_schema))
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

    async def prefill(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                      knowledge: Sequence[str] = (), language: str = "en") -> int:
        """Evaluate and pin the system block :meth:`stream` would build for ``messages`` (their leading
        system messages), so the first caller of an agent does not wait for it.  Returns the tokens evaluated (0
        when it was cached or the model has no ChatML template)."""
        if self._closed or self._llama is None or not self._chatml:
            return 0
        prompt = build_chat_prompt(messages[:instruction_count(messages)], list(knowledge),
                                   list(tools) if self.supports_tools else [], language)

        def run() -> int:
            llama = self._llama
            if llama is None:
                return 0
            tokens: list[int] = llama.tokenize(prompt.prefix.encode("utf-8"), add_bos=False, special=True)
            with working("llm"):
                return self._prepare_context(llama, tokens, tokens)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    def prefix_cache_stats(self) -> dict[str, int]:
        return {"snapshots": len(self._cache), "bytes": self._cache.bytes, "restores": self._cache.restores}


def _finish(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"
