"""ChatML prompts (Qwen's chat template) built as plain text, and a streaming parser of Qwen's tool calls.

Why not ``create_chat_completion``: the prompt must be byte-for-byte stable between turns so llama.cpp's KV
cache covers everything but the caller's new words.  We therefore render the template ourselves, in two
parts: the **prefix** (one system message: persona, instructions, the agent's knowledge and the tool
signatures, in that order, fixed for an agent) and the **conversation** (user/assistant/tool messages,
append-only within a call).  The layout is Qwen2.5's own template (``<|im_start|>role\\n…<|im_end|>\\n``,
tools in ``<tools>`` and calls as ``<tool_call>{json}</tool_call>``), so the model sees what it was tuned on.

Qwen emits a tool call as text: ``<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>``, and sometimes
the bare JSON object without tags.  :class:`ToolCallParser` takes the streamed text and separates spoken
text from calls, holding back only what could still turn out to be a call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voicebot.i18n import phrase
from voicebot.llm.base import ChatMessage, TextDelta, ToolCall, ToolSpec, defuse

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
STOP = (IM_END, "<|endoftext|>")
TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
MAX_TOOL_CALL_CHARS = 2000
"""A "call" longer than this is not one: the text is spoken instead (bounded buffering)."""

# The rule and examples live in the message catalog (voicebot/i18n, key "grounding"), one per language.
# Measured on the exam: with the examples Qwen 0.5B stopped answering "I do not know" to "are you open on
# Saturday?" when the knowledge says it is closed (single questions 7 → 8 of 10).
GROUNDING = phrase("grounding")

_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>")


@dataclass(frozen=True)
class ChatPrompt:
    """``prefix`` is the system block (stable per agent); ``conversation`` the turns after it, ending with
    the assistant header the reply continues."""

    prefix: str
    conversation: str

    @property
    def text(self) -> str:
        return self.prefix + self.conversation


def system_text(instructions: Sequence[str], knowledge: Sequence[str], tools: Sequence[ToolSpec],
                language: str = "en") -> str:
    # Everything here but the template's own markers is text: defused (see voicebot.llm.base.defuse).
    parts = [" ".join(defuse(text).split()) for text in instructions if text.strip()]
    passages = [defuse(passage.strip()) for passage in knowledge if passage.strip()]
    if passages:
        parts.append(phrase("grounding", language))
        parts.append("Knowledge:\n" + "\n\n".join(passages))
    text = "\n\n".join(parts)
    if tools:
        signatures = "".join("\n" + json.dumps(t.to_json_schema_tool(), ensure_ascii=False) for t in tools)
        text = f"{text}\n\n{_TOOLS_HEADER}{signatures}{_TOOLS_FOOTER}"
    return text


def _message(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def _tool_call_text(call: ToolCall) -> str:
    payload = json.dumps({"name": call.name, "arguments": dict(call.arguments)}, ensure_ascii=False)
    return f"{TOOL_OPEN}\n{payload}\n{TOOL_CLOSE}"


class SystemNote(ChatMessage):
    """A system message for one turn (facts for the question after it), rendered where it stands.

    Its own type, not a position: the first question's note comes right after persona and guidance, where a
    plain system message would join the cached block and change the prefix the agent's warm-up pinned."""


class ContextNote(SystemNote):
    """A system note that holds for the whole conversation (a campaign call's contact details), placed right
    after the instructions: outside the cached block like any note, and the same on every turn, so the
    conversation stays append-only.  Backends that drop a turn's notes keep this one (see
    :func:`voicebot.llm.ollama.build_chat_payload`)."""


def instruction_count(messages: Sequence[ChatMessage]) -> int:
    """How many leading messages are instructions (plain system messages before anything else)."""
    return next((i for i, m in enumerate(messages) if m.role != "system" or isinstance(m, SystemNote)),
                len(messages))


def build_chat_prompt(messages: Sequence[ChatMessage], knowledge: Sequence[str],
                      tools: Sequence[ToolSpec], language: str = "en") -> ChatPrompt:
    """The ChatML prompt: the leading system messages (persona, channel guidance) join the one system block with
    the knowledge and tools; the other messages follow in order, then the assistant header.  A system message
    later in the conversation (a note for one turn) stays in its place: merged into the block it would change
    the cached prefix on every turn."""
    lead = instruction_count(messages)
    instructions = [m.content for m in messages[:lead]]
    prefix = _message("system", system_text(instructions, knowledge, tools, language))
    parts: list[str] = []
    tool_results: list[str] = []
    for message in messages[lead:]:
        if message.role == "tool":
            tool_results.append(f"<tool_response>\n{defuse(message.content)}\n</tool_response>")
            continue
        if tool_results:  # Qwen's template: consecutive tool results form one "user" message
            parts.append(_message("user", "\n".join(tool_results)))
            tool_results = []
        content = defuse(message.content.strip())
        if message.role == "assistant" and message.tool_calls:
            calls = "\n".join(_tool_call_text(c) for c in message.tool_calls)
            content = f"{content}\n{calls}" if content else calls
        parts.append(_message(message.role, content))
    if tool_results:
        parts.append(_message("user", "\n".join(tool_results)))
    parts.append(f"{IM_START}assistant\n")
    return ChatPrompt(prefix, "".join(parts))


def parse_tool_call(text: str, index: int = 0) -> ToolCall | None:
    """``{"name": …, "arguments": {…}}`` (arguments may also be a JSON string) → ToolCall, else None."""
    try:
        data: Any = json.loads(text.strip())
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"].strip():
        return None
    arguments: Any = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    return ToolCall(data["name"].strip(), arguments, id=f"call_{index}")


class ToolCallParser:
    """Feed streamed text with :meth:`push`; get spoken :class:`TextDelta` and parsed :class:`ToolCall` out.

    Text is passed on at once except (a) a tail that could be the start of ``<tool_call>``, (b) the inside
    of a tagged call until its closing tag, (c) a reply that starts with ``{`` (a bare JSON call), held to
    the end.  What is held is bounded by :data:`MAX_TOOL_CALL_CHARS`; anything that does not parse as a
    call is spoken after all, so no reply text is ever lost."""

    def __init__(self) -> None:
        self._pending = ""
        self._in_call = False
        self._bare = False
        self._started = False
        self._calls = 0

    def _call(self, body: str) -> ToolCall | None:
        call = parse_tool_call(body, self._calls)
        if call is not None:
            self._calls += 1
        return call

    def push(self, text: str) -> list[TextDelta | ToolCall]:
        out: list[TextDelta | ToolCall] = []
        self._pending += text
        if not self._started:
            stripped = self._pending.lstrip()
            if not stripped:
                return out
            self._started = True
            self._pending = stripped
            self._bare = stripped.startswith("{")
        if self._bare:
            if len(self._pending) > MAX_TOOL_CALL_CHARS:
                self._bare = False  # too long for a call: it is text
            else:
                return out
        while self._pending:
            if self._in_call:
                end = self._pending.find(TOOL_CLOSE)
                if end < 0:
                    if len(self._pending) > MAX_TOOL_CALL_CHARS:
                        out.append(TextDelta(TOOL_OPEN + self._pending))
                        self._pending, self._in_call = "", False
                    break
                body, self._pending = self._pending[:end], self._pending[end + len(TOOL_CLOSE):]
                self._in_call = False
                call = self._call(body)
                out.append(call if call is not None else TextDelta(f"{TOOL_OPEN}{body}{TOOL_CLOSE}"))
                continue
            start = self._pending.find(TOOL_OPEN)
            if start >= 0:
                if start:
                    out.append(TextDelta(self._pending[:start]))
                self._pending = self._pending[start + len(TOOL_OPEN):]
                self._in_call = True
                continue
            keep = _partial_suffix(self._pending, TOOL_OPEN)
            emit = self._pending[:len(self._pending) - keep]
            if emit:
                out.append(TextDelta(emit))
            self._pending = self._pending[len(self._pending) - keep:]
            break
        return out

    def finish(self) -> list[TextDelta | ToolCall]:
        """The end of the reply: whatever is held is a call if it parses, else text."""
        pending, self._pending = self._pending, ""
        if not self._started:  # only whitespace came: nothing to say
            return []
        if self._in_call:
            self._in_call = False
            call = self._call(pending.split(TOOL_CLOSE)[0])
            return [call] if call is not None else [TextDelta(TOOL_OPEN + pending)]
        if self._bare:
            self._bare = False
            call = self._call(pending)
            if call is not None:
                return [call]
        return [TextDelta(pending)] if pending else []


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
