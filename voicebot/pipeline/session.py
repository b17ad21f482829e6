"""One call's pipeline: media clock → VAD → turn detector → STT → agent → sentences → TTS → playout.

``CallSession.run()`` is the call's single entry point and lives in one named asyncio task.  The media clock
calls ``_on_frame``/``_next_frame`` every 20 ms; everything slow (STT, LLM, TTS, database) runs in executors or
other tasks, so the clock is never held up.  A caller turn is processed by one cancellable task: barge-in (the
caller speaking over the bot) clears the playout at once and cancels that task, LLM and TTS included.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from voicebot.audio import Audio, Pcm, resample
from voicebot.calls.store import TurnRecord
from voicebot.errors import EvaError, TransferRefused
from voicebot.i18n import phrase
from voicebot.metrics import BARGE_INS_TOTAL, TURN_STAGE_SECONDS, agent_label
from voicebot.pipeline.dtmf import KEYS, DtmfCollector, DtmfStep, dtmf_turn_text
from voicebot.pipeline.frames import Sentence, SpeechPaused, SpeechStarted, UserUtterance
from voicebot.pipeline.playout import Playout
from voicebot.pipeline.responder import (
    CallContext,
    CallerInput,
    InputResponder,
    Listen,
    PlayPrompt,
    ReplyDone,
    ReplyEvent,
    ReplyStarted,
    Responder,
    TextDelta,
    ToolCall,
)
from voicebot.pipeline.sentences import SentenceSplitter
from voicebot.pipeline.turns import TurnConfig, TurnDetector
from voicebot.pipeline.vad import Vad

log = logging.getLogger(__name__)

STAGE_METRIC = {"stt_done": "stt", "first_sentence_ready": "first_sentence"}
NOT_HEARD = phrase("not_heard")
TROUBLE = phrase("trouble")
TRANSFER_REFUSED = phrase("transfer_refused")


class Transport(Protocol):
    rate: int
    frame_samples: int

    async def start(self, on_frame: Callable[[Pcm, float], None], next_frame: Callable[[], Pcm | None]) -> None: ...

    async def close(self) -> None: ...


class Stt(Protocol):
    async def transcribe(self, samples: Pcm, rate: int) -> Any: ...


class Tts(Protocol):
    async def speak(self, text: str, rate: int, voice: str, deadline: float | None = None) -> Audio:
        """``deadline``: when the audio is needed, on the loop's clock (None: now)."""
        ...


class CallControl(Protocol):
    """What the session may ask of the telephony side (implemented over ARI)."""

    async def transfer_destination(self, target: str) -> str:
        """The dialplan extension for the agent's transfer ``target`` (what the LLM asked for: untrusted), or
        TransferRefused when the call may not go there."""
        ...

    async def transfer(self, target: str) -> None:
        """Continue the call at extension ``target`` (one :meth:`transfer_destination` returned)."""
        ...

    async def hangup(self) -> None: ...

    async def continue_dialplan(self, result: str, variables: dict[str, str]) -> None:
        """Hand the call back to the dialplan (next priority after ``Stasis()``) with ``EVA_RESULT`` and
        ``EVA_VAR_<name>`` set; the caller stays on the line."""
        ...


@dataclass(frozen=True)
class SessionConfig:
    turn: TurnConfig = field(default_factory=TurnConfig)
    vad_aggressiveness: int = 2
    dtmf_timeout_s: float = 2.0
    dtmf_terminator: str = "#"
    not_heard: str = NOT_HEARD
    barge_in_confirm_ms: int = 300
    """Voiced time that proves an interruption is words: the reply is cancelled.  Shorter sounds only pause the
    bot until STT says whether they were words (a cough: the bot carries on where it paused)."""
    early_end_of_turn: bool = True
    """End the turn as soon as the speculative transcript is a complete sentence (ends in . ? !), instead of
    waiting for the full end-of-turn silence."""
    dtmf_min_interval_s: float = 1.0
    """At most one DTMF turn (an LLM reply and two stored messages) per this many seconds: sequences that
    end sooner (a ``1#1#1#...`` flood) are merged into the next turn rather than each starting one."""
    max_dtmf_digits: int = 64
    """Keys collected for one turn; further keys before it starts are ignored (logged)."""


Persist = Callable[[TurnRecord], Awaitable[None]]


class CallSession:
    def __init__(self, ctx: CallContext, transport: Transport, stt: Stt, tts: Tts, responder: Responder,
                 control: CallControl, persist: Persist, config: SessionConfig | None = None) -> None:
        self.ctx = ctx
        self.transport = transport
        self.stt = stt
        self.tts = tts
        self.responder = responder
        self.control = control
        self.persist = persist
        self.config = config or SessionConfig()
        self.vad = Vad(self.config.vad_aggressiveness)
        self.detector = TurnDetector(self.config.turn)
        self.playout = Playout(transport.frame_samples)
        self.rate = transport.rate
        self._inbox: asyncio.Queue[UserUtterance | _Keys | _NoInput | None] = asyncio.Queue()
        self._turn_task: asyncio.Task[None] | None = None
        self._turn_index = 0
        self._current: _Turn | None = None
        self._carry = ""
        self._carry_audio: list[Pcm] = []
        self._speculative: tuple[float, asyncio.Future[Any]] | None = None
        self._pending_barge: float | None = None
        self._known: dict[float, Any] = {}
        """Transcripts already made for an utterance (keyed by its end time)."""
        self._dtmf = DtmfCollector(terminator=self.config.dtmf_terminator, timeout_s=self.config.dtmf_timeout_s,
                                   min_interval_s=self.config.dtmf_min_interval_s,
                                   max_digits=self.config.max_dtmf_digits)
        self._dtmf_timer: asyncio.TimerHandle | None = None
        self._dtmf_refused = 0
        self._flows = isinstance(responder, InputResponder)
        """The responder takes typed turns (flows): raw keys, the call's start, no input after a Listen."""
        self._listening: Listen | None = None
        self._no_input_timer: asyncio.TimerHandle | None = None
        self._last_key_at = 0.0
        self._ending: str | None = None
        self._done = asyncio.Event()
        self.barge_ins = 0
        self.outcome = "completed"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ entry point
    async def run(self) -> str:
        """Run the call until it ends; returns the outcome.  Always releases the media transport."""
        self._loop = asyncio.get_running_loop()
        try:
            await self.transport.start(self._on_frame, self._next_frame)
            if self.ctx.greeting or self._flows:
                # A flow-aware responder opens the call itself (a flow's first question, or the greeting).
                self._start_turn(_Turn(index=self._next_index(), kind="greeting", reply_text=self.ctx.greeting))
            while True:
                item = await self._inbox.get()
                if item is None:
                    break
                busy = self._turn_task is not None and not self._turn_task.done()
                if isinstance(item, _NoInput) and (busy or item.listen is not self._listening):
                    continue  # stale: the caller answered, or a reply is still going
                if busy:
                    await self._interrupt("new input")
                if isinstance(item, _Keys):
                    # Timed from the last key: an inter-digit wait is latency the caller lives through, and
                    # "stt_done" (the input is known) is when the keys became the answer.
                    turn = _Turn(index=self._next_index(), kind="dtmf", user_text=dtmf_turn_text(item.keys),
                                 keys=item.keys, speech_end=min(item.at, self._loop.time()))
                    turn.mark("stt_done", self._loop.time())
                    self._start_turn(turn)
                elif isinstance(item, _NoInput):
                    self._start_turn(_Turn(index=self._next_index(), kind="no_input", speech_end=self._loop.time()))
                else:
                    self._start_turn(_Turn(index=self._next_index(), kind="speech", utterance=item,
                                           speech_end=item.ended))
        finally:
            await self._shutdown()
        return self.outcome

    def end(self, reason: str = "hangup") -> None:
        """The call is over (caller hung up, or we did): stop everything.  Idempotent, callable from any task."""
        if self._ending is None:
            self._ending = reason
            self._inbox.put_nowait(None)

    @property
    def ending(self) -> str | None:
        """Why the call is ending (caller_hangup, bot_hangup, transferred, continued, shutdown), or None while it
        runs."""
        return self._ending

    def dtmf(self, digit: str) -> None:
        """A DTMF digit from the caller.  Stops playout (it is an interruption) and collects a sequence."""
        if self._loop is None:
            return
        self._cancel_no_input()
        self._last_key_at = self._loop.time()
        if self.playout.busy:
            self._barge_in(self._loop.time(), reason="dtmf")
        self._dtmf_step(self._dtmf.press(digit, self._loop.time()))

    def _dtmf_step(self, step: DtmfStep) -> None:
        assert self._loop is not None
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
            self._dtmf_timer = None
        if step.refused:
            self._dtmf_refused += 1
            if self._dtmf_refused == 1:
                log.warning("call %s: DTMF key refused (not a key, or more than %d waiting)", self.ctx.call_id,
                            self.config.max_dtmf_digits)
        if step.turn:
            self._dtmf_refused = 0
            self._inbox.put_nowait(_Keys(step.turn, self._last_key_at))
        if step.flush_at is not None:
            self._dtmf_timer = self._loop.call_at(step.flush_at, self._flush_digits)

    def _flush_digits(self) -> None:
        assert self._loop is not None
        self._dtmf_timer = None
        self._dtmf_step(self._dtmf.flush(self._loop.time()))

    # ------------------------------------------------------------------ media clock callbacks (every 20 ms)
    def _on_frame(self, samples: Pcm, t: float) -> None:
        voiced = self.vad.is_speech(samples, self.rate)
        for event in self.detector.feed(samples, self.rate, voiced, t):
            if isinstance(event, SpeechStarted):
                self._drop_speculative()
                self._cancel_no_input()
                if self._turn_task is not None and not self._turn_task.done():
                    # Hold the bot's audio at once (the caller hears it stop), but only cancel the reply once the
                    # caller's speech is long enough to be words, not a cough or a click on the line.
                    self.playout.pause()
                    self._pending_barge = event.onset
            elif isinstance(event, SpeechPaused):
                # Transcribe now, while we wait to be sure the caller has finished -- unless the shared STT
                # worker is busy (another call's final transcript must not wait behind our guess).
                self._drop_speculative()
                if getattr(self.stt, "busy", False):
                    continue
                future = asyncio.ensure_future(self.stt.transcribe(event.samples, event.rate))
                self._speculative = (event.last_voiced, future)
                if self.config.early_end_of_turn:
                    future.add_done_callback(functools.partial(self._maybe_end_turn, event.last_voiced))
            elif self._pending_barge is not None:
                # A short sound over the bot's voice: words, or a cough?  STT decides; the bot stays paused.
                self._keep(self._check_interruption(event))
            elif len(event.samples):
                self._inbox.put_nowait(event)
        if self._pending_barge is not None and self.detector.voiced_ms >= self.config.barge_in_confirm_ms:
            self._confirm_barge_in(t)

    async def _check_interruption(self, utterance: UserUtterance) -> None:
        text = ""
        if len(utterance.samples):
            result = await self.stt.transcribe(utterance.samples, utterance.rate)
            text = str(result.text).strip()
            if text:
                self._known[utterance.ended] = result
        if self._pending_barge is None:
            return
        if not text:
            onset, self._pending_barge = self._pending_barge, None
            self.playout.resume()  # carry on where we paused
            assert self._loop is not None
            log.info("call %s: a sound paused the bot for %.0f ms; not words, carrying on", self.ctx.call_id,
                     (self._loop.time() - onset) * 1000)
            return
        assert self._loop is not None
        self._confirm_barge_in(self._loop.time())
        self._inbox.put_nowait(utterance)

    def _confirm_barge_in(self, t: float) -> None:
        if self._pending_barge is not None:
            onset, self._pending_barge = self._pending_barge, None
            self._barge_in(t, reason="speech", onset=onset)

    def _maybe_end_turn(self, last_voiced: float, future: asyncio.Future[Any]) -> None:
        """A speculative transcript arrived during the pause: a complete sentence ends the turn right away."""
        if (self._loop is None or self._speculative is None or self._speculative[1] is not future
                or future.cancelled() or future.exception() is not None):
            return
        text = str(future.result().text).rstrip()
        log.debug("speculative transcript after %.0f ms of pause: complete=%s speaking=%s same=%s",
                  (self._loop.time() - last_voiced) * 1000, text.endswith((".", "?", "!")), self.detector.speaking,
                  self.detector.last_voiced == last_voiced)
        if not text.endswith((".", "?", "!")) or not self.detector.speaking or self.detector.last_voiced != last_voiced:
            return
        utterance = self.detector.end_turn(self._loop.time())
        if utterance is not None and len(utterance.samples):
            self._inbox.put_nowait(utterance)

    def _drop_speculative(self) -> None:
        if self._speculative is not None:
            self._speculative[1].cancel()
            self._speculative = None

    def _take_speculative(self, ended: float) -> asyncio.Future[Any] | None:
        """The speculative transcript, if it covers exactly this utterance (no speech after the pause)."""
        spec, self._speculative = self._speculative, None
        if spec is None:
            return None
        if spec[0] == ended and not self._carry_audio:
            return spec[1]
        spec[1].cancel()
        return None

    def _next_frame(self) -> Pcm | None:
        assert self._loop is not None
        return self.playout.pop(self._loop.time())

    # ------------------------------------------------------------------ turns
    def _next_index(self) -> int:
        index = self._turn_index
        self._turn_index += 1
        return index

    def _start_turn(self, turn: _Turn) -> None:
        self._cancel_no_input()
        self._current = turn
        self.playout.new_turn(turn.first_frame_out)
        self._turn_task = asyncio.create_task(self._run_turn(turn), name=f"turn-{self.ctx.channel_id}-{turn.index}")

    def _barge_in(self, t: float, *, reason: str, onset: float | None = None) -> None:
        """Stop the bot now: drop queued audio (synchronously, within this frame) and cancel the turn."""
        turn = self._current
        if turn is None or turn.finished:
            self.playout.resume()
            return
        heard = self.playout.clear()
        turn.interrupted = True
        turn.spoken = heard  # only what reached the caller: a sentence cut short counts for its played part
        if heard or self.playout.frames_out:
            self.barge_ins += 1
            BARGE_INS_TOTAL.inc(agent=agent_label(self.ctx.agent_name))
            log.info("barge-in (%s) on call %s after %d frames, %.0f ms after speech onset", reason, self.ctx.call_id,
                     self.playout.frames_out, (t - onset) * 1000 if onset is not None else 0.0)
        elif not turn.first_frame_at and turn.kind == "speech":
            # The caller kept talking before we said anything: their words carry into the next turn
            # (as text when STT already ran, else as audio), so a pause mid-sentence loses nothing.
            if turn.user_text:
                self._carry = (self._carry + " " + turn.user_text).strip()
            elif turn.audio is not None:
                # All of it: this turn's audio already includes what earlier interruptions carried.
                self._carry_audio.append(turn.audio)
            elif turn.utterance is not None:
                self._carry_audio.append(turn.utterance.samples)
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()

    async def _interrupt(self, reason: str) -> None:
        if self._loop is not None:
            self._barge_in(self._loop.time(), reason=reason)
        if self._turn_task is not None:
            await reap(self._turn_task)

    async def _run_turn(self, turn: _Turn) -> None:
        try:
            await self._process(turn)
        except asyncio.CancelledError:
            turn.interrupted = True
            self._keep(self._record(turn))
            raise
        except Exception:
            log.exception("turn %d of call %s failed", turn.index, self.ctx.call_id)
            trouble = phrase("trouble", self.ctx.language)
            turn.bot_text = turn.bot_text or trouble
            with contextlib.suppress(Exception):
                await self._speak_all(turn, [trouble])
        turn.finished = True
        try:
            await self._record(turn)
        finally:
            if turn.after is not None:
                await self._run_action(turn.after)

    async def _process(self, turn: _Turn) -> None:
        loop = asyncio.get_running_loop()
        if self._flows and turn.kind in ("greeting", "no_input"):
            await self._converse(turn)
            return
        if turn.kind == "greeting":
            turn.bot_text = turn.reply_text
            await self._speak_all(turn, [turn.reply_text])
            return
        if turn.utterance is not None:
            speculative = self._take_speculative(turn.utterance.ended)
            samples = turn.utterance.samples
            if self._carry_audio:
                gap = np.zeros(self.rate // 5, dtype=np.int16)
                samples = concat([*(p for chunk in self._carry_audio for p in (chunk, gap)), samples])
                self._carry_audio = []
            turn.audio = samples
            known = self._known.pop(turn.utterance.ended, None)
            if known is not None:
                result = known
            elif speculative is not None:
                result = await speculative
            else:
                result = await self.stt.transcribe(samples, turn.utterance.rate)
            turn.mark("stt_done", loop.time())
            turn.user_text = (self._carry + " " + str(result.text)).strip()
            self._carry = ""
            log.debug("call %s caller said: %r", self.ctx.call_id, turn.user_text)
        if not turn.user_text and self._listening is not None:
            turn.kind = "no_input"  # a flow step waits for an answer: nothing intelligible is no input there
            await self._converse(turn)
            return
        if not turn.user_text:
            turn.bot_text = self.config.not_heard
            await self._speak_all(turn, [self.config.not_heard])
            return
        await self._converse(turn)

    async def _converse(self, turn: _Turn) -> None:
        """LLM → sentences (producer) overlapped with TTS → playout (consumer)."""
        loop = asyncio.get_running_loop()
        sentences: asyncio.Queue[Sentence | None] = asyncio.Queue()
        splitter = SentenceSplitter()

        async def produce() -> None:
            try:
                async for event in self._reply(turn):
                    if isinstance(event, Listen):
                        turn.listen = event
                        self._listen(event)
                    elif isinstance(event, PlayPrompt):
                        for text in splitter.flush():
                            await sentences.put(self._sentence(turn, text, loop.time()))
                        turn.bot_text = f"{turn.bot_text} {event.text}".strip() + " "
                        sentence = self._sentence(turn, event.text, loop.time())
                        turn.prompts[sentence.index] = event.audio
                        await sentences.put(sentence)
                    elif isinstance(event, TextDelta):
                        turn.mark("llm_first_token", loop.time())
                        turn.bot_text += event.text
                        for text in splitter.push(event.text):
                            await sentences.put(self._sentence(turn, text, loop.time()))
                    elif isinstance(event, ReplyStarted):
                        turn.message_id = event.message_id
                    elif isinstance(event, ToolCall):
                        turn.tools.append(event)
                    elif isinstance(event, ReplyDone):
                        if event.first_token_at is not None:
                            # The model's first token came before the first text (held by the grounding guard).
                            marked = turn.marks.get("llm_first_token", event.first_token_at)
                            turn.marks["llm_first_token"] = min(marked, event.first_token_at)
                        turn.message_id = event.message_id
                        turn.prompt_tokens_evaluated = event.prompt_tokens_evaluated
                        turn.prompt_eval_ms = event.prompt_eval_ms
                        if event.variables is not None:
                            turn.variables = dict(event.variables)
                        if event.text and not turn.bot_text:
                            turn.bot_text = event.text
                            for text in splitter.push(event.text):
                                await sentences.put(self._sentence(turn, text, loop.time()))
                for text in splitter.flush():
                    await sentences.put(self._sentence(turn, text, loop.time()))
            finally:
                sentences.put_nowait(None)

        producer = asyncio.create_task(produce(), name=f"llm-{self.ctx.channel_id}-{turn.index}")
        try:
            while (sentence := await sentences.get()) is not None:
                await self._speak(turn, sentence)
            await producer
        finally:
            if not producer.done():
                producer.cancel()
                await reap(producer)
        if self._flows and turn.listen is None:
            self._listen(None)  # no flow step waits now: keys and silence work as for any agent again
        if not turn.bot_text.strip() and not (self._flows and turn.kind in ("greeting", "no_input")):
            turn.bot_text = self.ctx.fallback
            await self._speak_all(turn, [self.ctx.fallback])
        for tool in turn.tools:
            if tool.name in ("hang_up", "continue_dialplan"):
                turn.after = tool
            elif tool.name == "transfer_call":
                # The target is the LLM's words (a caller can talk it into anything): only a destination the
                # agent allows is dialled; a refusal is said, and the call goes on.
                try:
                    destination = await self.control.transfer_destination(str(tool.arguments.get("target", "")))
                except TransferRefused as exc:
                    log.info("call %s: transfer refused [%s]", self.ctx.call_id, exc.code)
                    log.debug("call %s: refused transfer target %r", self.ctx.call_id, tool.arguments.get("target"))
                    apology = phrase("transfer_refused", self.ctx.language)
                    if exc.options:
                        options = _spoken_list(exc.options, phrase("list_or", self.ctx.language))
                        apology += " " + phrase("transfer_options", self.ctx.language, options=options)
                    turn.bot_text = f"{turn.bot_text} {apology}".strip()
                    await self._speak(turn, self._sentence(turn, apology, loop.time()))
                    continue
                turn.after = ToolCall("transfer_call", {"target": destination})
        await self.playout.idle.wait()
        if turn.listen is not None and turn.listen.no_input_s and turn.after is None and self._loop is not None:
            # The step's no-input time counts from the end of its question, not from when it was generated.
            self._no_input_timer = self._loop.call_later(turn.listen.no_input_s, self._no_input_due, turn.listen)

    def _reply(self, turn: _Turn) -> AsyncIterator[ReplyEvent]:
        if not self._flows:
            return self.responder.respond(self.ctx, turn.user_text)
        assert isinstance(self.responder, InputResponder)
        if turn.kind == "greeting":
            event = CallerInput("start", text=turn.reply_text)
        elif turn.kind == "dtmf":
            event = CallerInput("dtmf", text=turn.user_text, keys=turn.keys)
        elif turn.kind == "no_input":
            event = CallerInput("no_input")
        else:
            event = CallerInput("speech", text=turn.user_text)
        return self.responder.respond_input(self.ctx, event)

    def _listen(self, listen: Listen | None) -> None:
        """A flow step's key settings (or, with None, the call's own) for the keys that come next."""
        self._listening = listen
        if listen is None:
            self._dtmf.terminator = self.config.dtmf_terminator if self.config.dtmf_terminator in KEYS else ""
            self._dtmf.timeout_s, self._dtmf.complete_at = self.config.dtmf_timeout_s, None
        else:
            self._dtmf.terminator = listen.terminator if listen.terminator in KEYS else ""
            self._dtmf.timeout_s, self._dtmf.complete_at = listen.dtmf_timeout_s, listen.max_digits

    def _no_input_due(self, listen: Listen) -> None:
        """Timer callback (on the loop, never waits): the caller said and pressed nothing after the question."""
        self._no_input_timer = None
        if self.detector.speaking or self._dtmf.digits or self._pending_barge is not None:
            return  # the caller is answering right now
        self._inbox.put_nowait(_NoInput(listen))

    def _cancel_no_input(self) -> None:
        if self._no_input_timer is not None:
            self._no_input_timer.cancel()
            self._no_input_timer = None

    def _sentence(self, turn: _Turn, text: str, t: float) -> Sentence:
        turn.mark("first_sentence_ready", t)
        sentence = Sentence(text=text, index=len(turn.sentences), t=t)
        turn.sentences.append(sentence)
        return sentence

    async def _speak(self, turn: _Turn, sentence: Sentence) -> None:
        prompt = turn.prompts.pop(sentence.index, None)
        if prompt is not None:  # a recorded prompt: played as it is, at the call's rate
            audio = prompt if prompt.rate == self.rate else await asyncio.to_thread(resample, prompt, self.rate)
        else:
            # Needed when the audio queued before it has played: the speaker serves the earliest deadline first,
            # so another caller's first sentence does not wait behind this reply's later ones.
            deadline = asyncio.get_running_loop().time() + self.playout.queued_s
            audio = await self.tts.speak(sentence.text, self.rate, self.ctx.voice, deadline)
        turn.mark("tts_first_audio", asyncio.get_running_loop().time())
        self.playout.enqueue(audio.samples, sentence)

    async def _speak_all(self, turn: _Turn, texts: list[str]) -> None:
        loop = asyncio.get_running_loop()
        for text in texts:
            await self._speak(turn, self._sentence(turn, text, loop.time()))
        await self.playout.idle.wait()

    async def _run_action(self, tool: ToolCall) -> None:
        await self.playout.idle.wait()
        # Claim the ending first: Asterisk's hang-up events for our own action must not read as the caller's.
        try:
            if tool.name == "transfer_call":
                target = str(tool.arguments.get("target", "")).strip()
                if target:
                    self._ending, self.outcome = "transferred", "transferred"
                    await self.control.transfer(target)
            elif tool.name == "hang_up":
                self._ending, self.outcome = "bot_hangup", "completed"
                await self.control.hangup()
            elif tool.name == "continue_dialplan":
                # The flow (or agent) is done with the call, the dialplan is not: the caller stays on the line.
                variables = tool.arguments.get("variables")
                self._ending, self.outcome = "continued", "continued"
                await self.control.continue_dialplan(
                    str(tool.arguments.get("result", "continue")),
                    {str(k): str(v) for k, v in variables.items()} if isinstance(variables, dict) else {})
        except EvaError as exc:
            # The action failed (e.g. ARI unreachable): end the call rather than leave it hanging.
            log.error("call %s: %s failed: [%s] %s", self.ctx.call_id, tool.name, exc.code, exc.message)
            self.outcome = "failed"
        finally:
            if self._ending is not None:
                self._inbox.put_nowait(None)

    async def _record(self, turn: _Turn) -> None:
        if turn.recorded:
            return
        turn.recorded = True
        if not turn.interrupted:
            turn.spoken = [s.text for s in turn.sentences]
        spoken = " ".join(turn.spoken)
        record = TurnRecord(index=turn.index, kind=turn.kind, user_text=turn.user_text, bot_text=turn.bot_text,
                            spoken_text=spoken, interrupted=turn.interrupted, speech_end=turn.speech_end_wall(),
                            timings_ms=turn.timings_ms(), prompt_tokens_evaluated=turn.prompt_tokens_evaluated,
                            prompt_eval_ms=turn.prompt_eval_ms, variables=turn.variables)
        for name, value in record.timings_ms.items():
            TURN_STAGE_SECONDS.observe(value / 1000.0, stage=STAGE_METRIC.get(name, name),
                                       agent=agent_label(self.ctx.agent_name))
        try:
            await self.persist(record)
            if turn.interrupted and turn.message_id is not None:
                await self.responder.mark_interrupted(self.ctx, turn.message_id, spoken)
        except asyncio.CancelledError:
            raise
        except Exception:  # a locked or unreachable database must not take the call down
            log.exception("could not persist turn %d of call %s", turn.index, self.ctx.call_id)

    def _keep(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ teardown
    async def _shutdown(self) -> None:
        self._drop_speculative()
        self._cancel_no_input()
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        self.playout.clear()
        try:
            if self._turn_task is not None and not self._turn_task.done():
                self._turn_task.cancel()
                await reap(self._turn_task)
        finally:
            await self.transport.close()  # the port is released even if this shutdown is cancelled
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._done.set()


@dataclass
class _Turn:
    index: int
    kind: str
    utterance: UserUtterance | None = None
    audio: Pcm | None = None
    """What is transcribed for this turn: the utterance plus any audio carried from interrupted turns."""
    user_text: str = ""
    reply_text: str = ""
    bot_text: str = ""
    speech_end: float | None = None
    interrupted: bool = False
    finished: bool = False
    recorded: bool = False
    message_id: int | None = None
    prompt_tokens_evaluated: int | None = None
    prompt_eval_ms: float | None = None
    sentences: list[Sentence] = field(default_factory=list)
    spoken: list[str] = field(default_factory=list)
    tools: list[ToolCall] = field(default_factory=list)
    after: ToolCall | None = None
    keys: str = ""
    """dtmf: the keys pressed (``user_text`` is how they read to an LLM)."""
    listen: Listen | None = None
    """The reply waits for an answer of this shape (a flow's collect step)."""
    prompts: dict[int, Audio] = field(default_factory=dict)
    """Sentence index -> the recorded prompt played for it instead of TTS."""
    variables: dict[str, str] | None = None
    marks: dict[str, float] = field(default_factory=dict)
    first_frame_at: float | None = None
    wall_anchor: tuple[float, datetime] = field(default_factory=lambda: (_loop_now(), datetime.now(UTC)))

    def mark(self, name: str, t: float) -> None:
        self.marks.setdefault(name, t)

    def first_frame_out(self, t: float) -> None:
        self.first_frame_at = t
        self.mark("first_frame_out", t)

    def timings_ms(self) -> dict[str, float]:
        if self.speech_end is None:
            return {}
        return {name: (t - self.speech_end) * 1000.0 for name, t in self.marks.items()}

    def speech_end_wall(self) -> datetime | None:
        if self.speech_end is None:
            return None
        loop_t, wall = self.wall_anchor
        return wall + timedelta(seconds=self.speech_end - loop_t)


@dataclass(frozen=True)
class _Keys:
    keys: str
    at: float
    """When the last key was pressed (loop time)."""


@dataclass(frozen=True)
class _NoInput:
    listen: Listen
    """The step it is for: stale once another reply set a new one."""


def _loop_now() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return 0.0


def _spoken_list(names: tuple[str, ...], conjunction: str = "or") -> str:
    """``("sales", "billing", "support")`` → ``"sales, billing or support"`` (``o`` in Spanish)."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


async def reap(task: asyncio.Task[Any]) -> None:
    """Wait for a task we cancelled (or that is ending) to finish.

    ``with suppress(CancelledError): await task`` would also swallow a cancellation aimed at *us* while we wait
    (the call's own task being cancelled), leaving that task running on, stuck in "cancelling".  ``asyncio.wait``
    never raises for the awaited task, so only our own cancellation propagates."""
    if not task.done():
        await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())


def concat(chunks: list[Pcm]) -> Pcm:
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
