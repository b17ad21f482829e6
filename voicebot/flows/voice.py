"""Flows on calls: a :class:`~voicebot.pipeline.responder.Responder` that runs a call's flow.

One :class:`FlowResponder` per call (the voice app makes it when the call's route names a flow, or its agent
has ``start_flow`` or ``flow_triggers``).  It turns the runner's replies into the pipeline's reply events, so
the session's sentence splitter, TTS, playout and barge-in work unchanged inside flows:

- what a step says -> ``TextDelta`` (a step's recorded ``prompt`` -> ``PlayPrompt``, the sound itself);
- what the step waits for -> ``Listen`` first (so keys pressed *during* the question already count with the
  step's DTMF settings), with the step's no-input timeout;
- ``ask_agent`` and ``agent`` steps -> the real agent's reply streamed through the call's agent responder, then
  :meth:`FlowRunner.agent_done`;
- a transfer or hang-up -> the ``transfer_call`` / ``hang_up`` tool call the session already carries out (the
  destination was checked with :meth:`CallControl.transfer_destination` before the flow was told it worked);
- the end of the flow: result ``continue`` -> ``ToolCall("continue_dialplan", {"result", "variables"})``;
  any other result hangs up after speaking -- unless the flow was entered from an agent's conversation
  (``start_flow`` / ``flow_triggers``): then the agent carries on.

On a campaign call the run starts with the contact's variables (``CallContext.variables``: the name and the
import's columns) set as ``contact_<name>`` (:func:`voicebot.pipeline.variables.placeholders`), so ``say: "Hello
{contact_name}"`` and a branch on ``contact_<column>`` work from the first step; what a step collects or an action
sets under such a name replaces the contact's value (the engine's variables are one map, the last write wins).

Recorded prompts are WAV files in the instance's sounds folder (``<data>/sounds/<name>.wav``, where Eva's own
``eva-operator`` and ``eva-no-route`` live); :func:`prompt_exists` is the check the admin API gives
:func:`voicebot.flows.spec.check_flow`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from voicebot.audio import Audio, read_wav
from voicebot.config import Settings
from voicebot.errors import EvaError, TransferRefused
from voicebot.flows.engine import AgentTurn, AskAgent
from voicebot.flows.resume import start_call_flow
from voicebot.flows.runner import FlowReply, FlowRunner
from voicebot.flows.spec import MAX_CHAIN, Collect
from voicebot.flows.triggers import trigger_for
from voicebot.i18n import phrase
from voicebot.pipeline.responder import (
    CallContext,
    CallerInput,
    Listen,
    PlayPrompt,
    ReplyDone,
    ReplyEvent,
    ReplyStarted,
    Responder,
    TextDelta,
    ToolCall,
)
from voicebot.pipeline.variables import placeholders

log = logging.getLogger(__name__)

FLOW_TROUBLE = phrase("flow_trouble")
PROMPT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
PROMPT_MAX_BYTES = 8 * 1024 * 1024
"""A recorded prompt larger than this (about 8 minutes at 8 kHz) is not loaded into a call."""
MAX_AGENT_ROUNDS = MAX_CHAIN + 1
"""Agent requests answered within one caller turn: an ask_agent step after another is a chain of steps that do
not wait, which the flow check bounds by MAX_CHAIN, so every step of a valid flow is reached."""


def prompt_path(settings: Settings, name: str) -> Path | None:
    """The WAV file of recorded prompt ``name``, or None for a name that is not a plain prompt name."""
    if not PROMPT_NAME.match(name):
        return None
    return settings.sounds_dir / f"{name}.wav"


def prompt_exists(name: str, settings: Settings | None = None) -> bool:
    """Whether Eva can play recorded prompt ``name`` on calls (a WAV file in the sounds folder).  Blocking (a
    stat); pass ``functools.partial(prompt_exists, settings=...)`` to :func:`check_flow`."""
    path = prompt_path(settings or Settings.load(), name)
    return path is not None and path.is_file()


def prompt_checker(settings: Settings) -> Callable[[str], bool]:
    """``prompt_exists`` bound to one instance's settings."""
    return lambda name: prompt_exists(name, settings)


def listen_for(collect: Collect) -> Listen:
    """How a collect step is heard on a call: its DTMF settings and its no-input time.

    A choice or yes/no step without DTMF settings whose key answers are all one key ("press 1 ...") takes
    one key as the whole answer, so the caller does not wait for the inter-digit timeout."""
    no_input_s = collect.timeout_ms / 1000.0
    if collect.dtmf is not None:
        return Listen(max_digits=collect.dtmf.max_digits, terminator=collect.dtmf.terminator,
                      dtmf_timeout_s=collect.dtmf.timeout_ms / 1000.0, no_input_s=no_input_s)
    one_key = collect.type == "yes_no" or (
        collect.type == "choice" and collect.choices is not None
        and all(len(s) == 1 for syns in collect.choices.values() for s in syns if s.isdigit() or s in "*#"))
    return Listen(max_digits=1 if one_key else 16, terminator="#", dtmf_timeout_s=3.0, no_input_s=no_input_s)


class FlowResponder:
    """Runs one call's flow (see the module docstring).  Not shared between calls."""

    def __init__(self, runner: FlowRunner, agent: Responder, *, settings: Settings, flow: str | None = None,
                 from_agent: bool = False, triggers: Mapping[str, Sequence[str]] | None = None,
                 transfer_destination: Callable[[str], Awaitable[str]] | None = None) -> None:
        """``flow``: started when the call starts (a route's flow, or the agent's ``start_flow``).
        ``from_agent``: the flow runs inside the agent's conversation, which carries on when it ends.
        ``triggers``: the agent's ``flow_triggers`` (flow name -> phrases) that start a flow mid-call.
        ``transfer_destination``: the call's check of a transfer target (TransferRefused when not allowed)."""
        self.runner = runner
        self.agent = agent
        self.settings = settings
        self.flow = flow
        self.from_agent = from_agent or flow is None
        self.triggers = dict(triggers or {})
        self._transfer_destination = transfer_destination
        self.run_id: int | None = None
        self._agent_pending = False
        """An agent request was cut short (barge-in): tell the runner it is done before the next input."""
        self._prompts: dict[str, Audio | None] = {}

    # ------------------------------------------------------------------ the runner's ChannelActions
    async def check_transfer(self, target: str) -> str | None:
        if self._transfer_destination is None:
            return None
        try:
            return await self._transfer_destination(target)
        except TransferRefused as exc:
            log.info("flow transfer refused [%s]", exc.code)
            return None

    # ------------------------------------------------------------------ Responder
    def respond(self, ctx: CallContext, text: str) -> AsyncIterator[ReplyEvent]:
        return self.respond_input(ctx, CallerInput("speech", text=text))

    async def mark_interrupted(self, ctx: CallContext, message_id: int | None, spoken_text: str) -> None:
        await self.agent.mark_interrupted(ctx, message_id, spoken_text)

    async def respond_input(self, ctx: CallContext, event: CallerInput) -> AsyncIterator[ReplyEvent]:
        if event.kind == "start":
            if self.flow is not None:
                async for e in self._start(ctx, self.flow, greeting=event.text):
                    yield e
            elif event.text:
                yield TextDelta(event.text)
            return
        if self.run_id is None:
            wanted = trigger_for(self.triggers, event.text) if event.kind == "speech" and self.triggers else None
            if wanted is not None:
                log.info("call %s: the caller's words start flow %s", ctx.call_id, wanted)
                async for e in self._start(ctx, wanted, greeting=""):
                    yield e
            elif event.kind != "no_input":
                async for e in self.agent.respond(ctx, event.text):
                    yield e
            return
        async for e in self._feed(ctx, self.run_id, event):
            yield e

    # ------------------------------------------------------------------ flow moves
    async def _start(self, ctx: CallContext, flow: str, *, greeting: str) -> AsyncIterator[ReplyEvent]:
        try:
            # A verified caller whose call dropped mid-flow continues at the same step (voicebot.flows.resume).
            # A campaign call's flow starts with the contact's variables set (the flow's own values win later).
            reply = (await start_call_flow(self.runner, self.runner.engine, ctx, flow, actions=self,
                                           resume_minutes=self.settings.flow_resume_minutes,
                                           variables=placeholders(ctx.variables))).reply
        except EvaError as exc:
            log.error("call %s: flow %s could not start: [%s] %s", ctx.call_id, flow, exc.code, exc.message)
            if self.from_agent:  # the agent's own conversation goes on without it
                if greeting:
                    yield TextDelta(greeting)
            else:
                yield TextDelta(phrase("flow_trouble", ctx.language))
                yield ToolCall("hang_up")
            return
        self.run_id = reply.run_id
        async for e in self._play(ctx, reply):
            yield e

    async def _feed(self, ctx: CallContext, run_id: int, event: CallerInput) -> AsyncIterator[ReplyEvent]:
        try:
            if self._agent_pending:
                # The caller cut the agent's answer short: that request is over, and this input is for
                # whatever the flow asks next (its question was not heard, so it is not said now).
                self._agent_pending = False
                reply = await self.runner.agent_done(run_id, actions=self)
                if reply.ended or reply.agent_request is not None or reply.listen is None:
                    async for e in self._play(ctx, reply):
                        yield e
                    return
            if event.kind == "no_input":
                reply = await self.runner.no_input(run_id, actions=self)
            elif event.kind == "dtmf":
                reply = await self.runner.answer(run_id, "", dtmf=event.keys, actions=self)
            else:
                reply = await self.runner.answer(run_id, event.text, actions=self)
        except EvaError as exc:
            log.error("call %s: flow run %d failed: [%s] %s", ctx.call_id, run_id, exc.code, exc.message)
            self.run_id = None
            yield TextDelta(phrase("flow_trouble", ctx.language))
            if not self.from_agent:
                yield ToolCall("hang_up")
            return
        async for e in self._play(ctx, reply):
            yield e

    async def _play(self, ctx: CallContext, reply: FlowReply) -> AsyncIterator[ReplyEvent]:
        """Say a reply, answering its agent requests in between, then do what its end asks."""
        message_id: int | None = None
        timings: tuple[int | None, float | None] = (None, None)
        for _ in range(MAX_AGENT_ROUNDS):
            if reply.listen is not None and not reply.ended:
                yield listen_for(reply.listen)
            for say in reply.says:
                audio = await self._prompt(say.prompt) if say.prompt else None
                if audio is not None:
                    yield PlayPrompt(audio, say.text or say.prompt or "")
                elif say.text:
                    yield TextDelta(say.text.rstrip() + " ")
            request = reply.agent_request
            if request is None:
                break
            self._agent_pending = True
            question = request.question if isinstance(request, AskAgent) else request.text
            streamed = False
            events = self.agent.respond(ctx, question)
            try:
                async for e in events:
                    if isinstance(e, TextDelta | ReplyStarted):
                        streamed = streamed or isinstance(e, TextDelta)
                        yield e
                    elif isinstance(e, ToolCall) and isinstance(request, AgentTurn):
                        yield e  # in a free conversation the agent may still transfer or hang up
                    elif isinstance(e, ReplyDone):
                        message_id = e.message_id
                        timings = (e.prompt_tokens_evaluated, e.prompt_eval_ms)
                        if e.text and not streamed:  # a responder that sends its text only whole
                            yield TextDelta(e.text)
            finally:
                close = getattr(events, "aclose", None)
                if close is not None:  # a barge-in stops the agent's generation now, not at its next token
                    await close()
            yield TextDelta(" ")
            self._agent_pending = False
            reply = await self.runner.agent_done(reply.run_id, actions=self)
        if reply.after is not None:
            action, destination = reply.after
            self.run_id = None
            yield ToolCall("transfer_call", {"target": destination}) if action == "transfer" else ToolCall("hang_up")
        elif reply.ended:
            self.run_id = None
            if reply.result == "continue":
                yield ToolCall("continue_dialplan", {"result": reply.result, "variables": dict(reply.variables)})
            elif not self.from_agent:
                yield ToolCall("hang_up")
        yield ReplyDone(text="", message_id=message_id, prompt_tokens_evaluated=timings[0],
                        prompt_eval_ms=timings[1], variables=_caller_variables(reply.variables))

    async def _prompt(self, name: str) -> Audio | None:
        """The recorded prompt's audio (read once per call, off the event loop), or None: say the text."""
        if name not in self._prompts:
            path = prompt_path(self.settings, name)
            self._prompts[name] = None
            if path is not None:
                try:
                    self._prompts[name] = await asyncio.to_thread(_read_prompt, path)
                except (OSError, ValueError, EOFError) as exc:
                    log.warning("recorded prompt %s cannot be played (%s); saying its text", name,
                                type(exc).__name__)
        return self._prompts[name]


def _read_prompt(path: Path) -> Audio:
    if path.stat().st_size > PROMPT_MAX_BYTES:
        raise ValueError("prompt too large")
    return read_wav(path)


def _caller_variables(variables: Mapping[str, str]) -> dict[str, str]:
    """The run's variables as stored on the turn row (the builtin ``channel`` is the same on every call)."""
    return {k: v for k, v in variables.items() if k != "channel"}

