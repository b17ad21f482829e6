"""Runs flows for every channel: the engine's state in the database, its requests carried out.

The engine (:mod:`voicebot.flows.engine`) is pure; this is where its outputs meet the world:

- the run's state is loaded from ``flow_runs`` and stored after every input (compare-and-set on ``version``,
  so two workers feeding the same conversation cannot both advance it; the loser gets ``FlowConflict``);
- ``Extract`` asks the LLM (bounded: a short prompt, a few tokens, a timeout) and feeds its answer back;
- ``Act`` runs webhooks (aiohttp, timeout, size-bounded JSON answer), ``set`` and ``send_message`` here, and
  asks the channel for ``transfer``/``hang_up`` (only the channel knows whether a call may go there);
- ``AskAgent``/``AgentTurn`` are handed back to the channel: the voice channel streams the agent's reply
  sentence by sentence, text channels take it whole (:meth:`FlowRunner.drive` does that for them).

A channel uses it as: ``start()`` (or ``active_run()`` to find the conversation's run), then ``answer()`` /
``no_input()`` per caller input; each returns a :class:`FlowReply` saying what to say, what to listen for, and
whether the agent must answer first or the run ended (with its result and variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

import aiohttp
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models import Agent, Flow, FlowRun, utcnow
from models.db import session_scope
from voicebot.errors import EvaError, NotFound
from voicebot.flows.engine import (
    Act,
    Advance,
    AgentTurn,
    AskAgent,
    Ended,
    Extract,
    FlowEngine,
    FlowState,
    Listen,
    Say,
)
from voicebot.flows.spec import BUILTIN_VARS, Collect, FlowSpec, fill, parse_flow
from voicebot.i18n import phrase
from voicebot.llm.base import ChatMessage, GenerationOptions, LanguageModel, TextDelta

log = logging.getLogger(__name__)

WEBHOOK_MAX_BYTES = 64 * 1024
WEBHOOK_MAX_VARIABLES = 20
"""Variables one webhook answer may add (a CRM record of 200 fields must not crowd out the flow's own)."""
EXTRACT_TIMEOUT_S = 8.0
MAX_INTERNAL = 72
"""Engine requests settled in one input (actions, extractions) before the run is declared stuck."""


class FlowError(EvaError):
    code = "flow_error"
    http_status = 422


class FlowConflict(FlowError):
    """Another worker advanced the same run first."""

    code = "flow_conflict"
    http_status = 409


class ChannelActions(Protocol):
    """What a flow may ask of the channel it runs on."""

    async def check_transfer(self, target: str) -> str | None:
        """The destination for ``target`` (e.g. the dialplan extension), or None when it is refused."""
        ...


@dataclass
class FlowReply:
    run_id: int
    says: list[Say] = field(default_factory=list)
    listen: Collect | None = None
    """What the run waits for from the caller (calls: speech timeout and DTMF settings)."""
    agent_request: AskAgent | AgentTurn | None = None
    """The agent must answer this first; then call :meth:`FlowRunner.agent_done`."""
    after: tuple[str, str] | None = None
    """What the channel does once everything is said: ("transfer", destination) or ("hang_up", "")."""
    ended: bool = False
    result: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    step: str = ""

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.says if s.text)


SendMessage = Callable[[str, str, str], Awaitable[bool]]
"""(channel, to, text) -> sent.  Given by the runtime when WhatsApp/e-mail can send."""


class FlowRunner:
    def __init__(self, engine: Engine, *, llm: LanguageModel | None = None,
                 send_message: SendMessage | None = None, today: Callable[[], date] = date.today,
                 webhook_session: Callable[[], aiohttp.ClientSession] | None = None) -> None:
        self.engine = engine
        self.llm = llm
        self.send_message = send_message
        self.today = today
        self._session_factory = webhook_session
        self._specs: dict[tuple[int, str], FlowSpec] = {}

    # ------------------------------------------------------------------ entry points
    async def start(self, flow: str | int, *, channel: str, conversation_id: int | None = None,
                    call_id: int | None = None, contact_id: int | None = None,
                    variables: dict[str, str] | None = None,
                    actions: ChannelActions | None = None) -> FlowReply:
        """Start ``flow`` (name or id) in a conversation; any earlier active run there is ended (replaced)."""
        row, spec = await asyncio.to_thread(self._load_flow, flow)
        engine = FlowEngine(spec, row.name, await asyncio.to_thread(self._language, row.agent_id))
        # ``channel`` last: it decides how values are said (voicebot.flows.engine.say_text), so no start variable
        # (a campaign contact's column) may replace it.
        start_vars = {**{k: str(v)[:500] for k, v in (variables or {}).items()}, "channel": channel}
        # Every engine step runs off the event loop: routing evaluates designers' patterns on caller data.
        advance = await asyncio.to_thread(engine.start, start_vars)
        run_id = await asyncio.to_thread(self._create_run, row, channel, conversation_id, call_id, contact_id,
                                         advance.state)
        log.info("flow %s started (run %d, %s)", row.name, run_id, channel)
        return await self._settle(run_id, engine, advance, version=0, actions=actions)

    async def answer(self, run_id: int, text: str, *, dtmf: str | None = None,
                     actions: ChannelActions | None = None) -> FlowReply:
        engine, state, version = await asyncio.to_thread(self._load_run, run_id)
        # The caller's words meet the parsers and the designer's patterns off the event loop (both are bounded:
        # MAX_INPUT characters, patterns with a timeout).
        advance = await asyncio.to_thread(engine.answer, state, text[:2000], dtmf=(dtmf or None) and dtmf[:64],
                                          today=self.today())
        return await self._settle(run_id, engine, advance, version=version, actions=actions)

    async def no_input(self, run_id: int, *, actions: ChannelActions | None = None) -> FlowReply:
        engine, state, version = await asyncio.to_thread(self._load_run, run_id)
        advance = await asyncio.to_thread(engine.no_input, state)
        return await self._settle(run_id, engine, advance, version=version, actions=actions)

    async def agent_done(self, run_id: int, *, actions: ChannelActions | None = None) -> FlowReply:
        """The agent answered the run's ``agent_request``."""
        engine, state, version = await asyncio.to_thread(self._load_run, run_id)
        advance = await asyncio.to_thread(engine.agent_done, state)
        return await self._settle(run_id, engine, advance, version=version, actions=actions)

    async def active_run(self, conversation_id: int) -> int | None:
        def find(session: Session) -> int | None:
            return session.exec(select(FlowRun.id).where(FlowRun.conversation_id == conversation_id,
                                                          FlowRun.status == "active")
                                .order_by(col(FlowRun.id).desc())).first()

        return await asyncio.to_thread(self._tx, find)

    async def resumable_run(self, flow: str | int, contact_id: int, *, channel: str,
                            within_s: float) -> int | None:
        """An active run of ``flow`` for this contact on ``channel`` touched within ``within_s`` (a caller whose
        call dropped mid-flow and who calls back continues where they were)."""
        def find(session: Session) -> int | None:
            flow_row = _flow_row(session, flow)
            cutoff = utcnow().timestamp() - within_s
            rows = session.exec(select(FlowRun).where(FlowRun.flow_id == flow_row.id,
                                                      FlowRun.contact_id == contact_id,
                                                      FlowRun.channel == channel, FlowRun.status == "active")
                                .order_by(col(FlowRun.id).desc())).all()
            for row in rows:
                updated = row.updated_at
                stamp = updated.timestamp() if updated.tzinfo else updated.replace(
                    tzinfo=utcnow().tzinfo).timestamp()
                if stamp >= cutoff:
                    return row.id
            return None

        return await asyncio.to_thread(self._tx, find)

    async def resume(self, run_id: int, *, call_id: int | None = None,
                     conversation_id: int | None = None) -> FlowReply:
        """Take over an active run in a new call/conversation: say the current step's question again."""
        def move(session: Session) -> None:
            row = session.get(FlowRun, run_id)
            if row is None:
                raise NotFound(f"flow run {run_id} does not exist")
            if call_id is not None:
                row.call_id = call_id
            if conversation_id is not None:
                row.conversation_id = conversation_id
            session.add(row)

        await asyncio.to_thread(self._tx, move)
        engine, state, version = await asyncio.to_thread(self._load_run, run_id)
        reply = FlowReply(run_id=run_id, step=state.step, variables=dict(state.variables))
        if state.ended:
            reply.ended, reply.result = True, state.result
            return reply
        step = engine.spec.step(state.step)
        if state.waiting == "ask_agent" and step.ask_agent is not None:
            # The agent's answer was lost with the old call: ask it again.
            reply.agent_request = AskAgent(fill(step.ask_agent, state.variables))
            return reply
        if state.waiting in ("agent", "extract", "action"):
            # What was in hand died with the old call (an agent turn, an extraction, an action whose outcome is
            # unknown): listen again at this step, so the caller is never ignored.
            state.waiting, state.pending_text = "input", ""
            await asyncio.to_thread(self._store, run_id, state, version)
        question = engine.say_text(step.say, state.variables)
        welcome = phrase("welcome_back", engine.language)
        reply.says.append(Say(f"{welcome} {question}".strip(), None))
        if step.prompt and question:
            reply.says[-1] = Say(welcome, None)
            reply.says.append(Say(question, step.prompt))
        reply.listen = step.collect if step.collect is not None else (
            Collect(var="last_input", type="text", required=False) if step.agent is not None else None)
        return reply

    async def drive(self, reply: FlowReply, ask_agent: Callable[[str], Awaitable[str]], *,
                    actions: ChannelActions | None = None) -> FlowReply:
        """For text channels: answer the run's agent requests with ``ask_agent`` (whole replies), collecting
        everything to say into one reply."""
        says = list(reply.says)
        for _ in range(MAX_INTERNAL):
            if reply.agent_request is None:
                break
            request = reply.agent_request
            text = request.question if isinstance(request, AskAgent) else request.text
            answer = await ask_agent(text)
            if answer:
                says.append(Say(answer))
            reply = await self.agent_done(reply.run_id, actions=actions)
            says.extend(reply.says)
        reply.says = says
        return reply

    # ------------------------------------------------------------------ the engine's requests
    async def _settle(self, run_id: int, engine: FlowEngine, advance: Advance, *, version: int,
                      actions: ChannelActions | None) -> FlowReply:
        # Once an input is accepted, its side effects (a webhook that books, a message sent) and the stored state
        # must go together: a barge-in that cancels the caller's turn must not leave the webhook done and the run
        # unmoved (the carried words would run it again).  The work finishes in its own task; the caller's turn
        # may still be cancelled around it.
        task = asyncio.create_task(self._settle_now(run_id, engine, advance, version=version, actions=actions),
                                   name=f"flow-run-{run_id}")
        task.add_done_callback(_log_orphan_failure)
        return await asyncio.shield(task)

    async def _settle_now(self, run_id: int, engine: FlowEngine, advance: Advance, *, version: int,
                          actions: ChannelActions | None) -> FlowReply:
        reply = FlowReply(run_id=run_id)
        for _ in range(MAX_INTERNAL):
            nxt: Advance | None = None
            for output in advance.outputs:
                if isinstance(output, Say):
                    reply.says.append(output)
                elif isinstance(output, Listen):
                    reply.listen = output.collect
                elif isinstance(output, Extract):
                    value = await self._extract(output)
                    nxt = await asyncio.to_thread(engine.extracted, advance.state, value, today=self.today())
                elif isinstance(output, Act):
                    ok, new_vars, after = await self._act(output, advance.state, engine, actions)
                    if after is not None:
                        reply.after = after
                    nxt = await asyncio.to_thread(engine.action_done, advance.state, ok, new_vars)
                elif isinstance(output, AskAgent | AgentTurn):
                    reply.agent_request = output
                elif isinstance(output, Ended):
                    reply.ended, reply.result, reply.variables = True, output.result, dict(output.variables)
            if nxt is None:
                break
            advance = nxt
        state = advance.state
        if state.waiting in ("extract", "action"):
            state.waiting, state.result = "ended", "failed"  # the runner could not settle it: never stuck
            reply.ended, reply.result = True, "failed"
        if state.ended and not reply.ended:
            # Ended before this input (its flow lost the step it was at: ``flow_changed``): say so, so the
            # channel hands the conversation back rather than waiting for a run that is over.
            reply.ended, reply.result = True, state.result
        reply.step, reply.variables = state.step, _ordered(engine.spec, state.variables)
        await asyncio.to_thread(self._store, run_id, state, version)
        if reply.ended:
            log.info("flow run %d ended: %s", run_id, reply.result)
        return reply

    async def _extract(self, request: Extract) -> str | None:
        if self.llm is None:
            return None
        what = request.collect.description or f"the {request.collect.type} value ({request.collect.var})"
        messages = [
            ChatMessage("system", "You extract one value from what a caller said. Reply with the value only, "
                                  "written plainly (digits as digits), or NONE if it is not there."),
            ChatMessage("user", f"Value wanted: {what}\nCaller said: {request.text}\nValue:"),
        ]
        parts: list[str] = []

        async def run() -> None:
            async with contextlib.aclosing(self.llm.stream(  # type: ignore[union-attr]
                    messages, options=GenerationOptions(temperature=0.0, max_tokens=24))) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        parts.append(event.text)

        try:
            await asyncio.wait_for(run(), EXTRACT_TIMEOUT_S)
        except TimeoutError:
            log.warning("flow extraction timed out after %.0f s", EXTRACT_TIMEOUT_S)
            return None
        except EvaError as exc:
            log.warning("flow extraction failed: [%s] %s", exc.code, exc.message)
            return None
        value = "".join(parts).strip().splitlines()[0].strip().strip('"') if "".join(parts).strip() else ""
        log.debug("flow extraction of %s: %r -> %r", request.collect.var, request.text, value)
        return None if not value or value.upper().startswith("NONE") else value[:200]

    async def _act(self, act: Act, state: FlowState, engine: FlowEngine,
                   actions: ChannelActions | None) -> tuple[bool, dict[str, str], tuple[str, str] | None]:
        action = act.action
        if action.type == "set":
            return True, dict(act.values), None
        if action.type == "hang_up":
            return True, {}, ("hang_up", "")
        if action.type == "transfer":
            assert action.target is not None
            if actions is None:
                return False, {}, None
            destination = await actions.check_transfer(action.target)
            return (destination is not None), {}, (("transfer", destination) if destination else None)
        if action.type == "send_message":
            assert action.channel is not None
            to = act.to or state.variables.get("caller", "")
            if self.send_message is None or not to:
                return False, {}, None
            try:
                sent = await self.send_message(action.channel, to, act.text)
            except EvaError as exc:
                log.warning("flow send_message failed: [%s] %s", exc.code, exc.message)
                sent = False
            return sent, {}, None
        assert action.url is not None
        return await self._webhook(action.url, action.timeout_s, action.store_as, state, engine)

    async def _webhook(self, url: str, timeout_s: float, store_as: str | None,
                       state: FlowState, engine: FlowEngine) -> tuple[bool, dict[str, str], None]:
        body = {"flow": engine.name, "step": state.step,
                "channel": state.variables.get("channel", ""), "variables": state.variables}
        own = self._session_factory is None
        session = aiohttp.ClientSession() if own else self._session_factory()  # type: ignore[misc]
        try:
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                    allow_redirects=False) as response:
                raw = await _read_bounded(response, WEBHOOK_MAX_BYTES + 1)
                ok = 200 <= response.status < 300
                new: dict[str, str] = {}
                if store_as is not None:
                    new[store_as] = str(response.status)
                if ok and len(raw) <= WEBHOOK_MAX_BYTES and raw.strip().startswith(b"{"):
                    try:
                        answer = json.loads(raw)
                    except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's stack
                        answer = None
                    if isinstance(answer, dict):
                        # An answer adds variables; it never replaces Eva's own (caller, channel) nor what the
                        # caller already gave -- a remote service must not redirect messages or rewrite answers.
                        for key, value in list(answer.items())[:200]:
                            if len(new) >= WEBHOOK_MAX_VARIABLES:
                                break
                            if (isinstance(key, str) and key.isidentifier() and len(key) <= 64
                                    and key not in BUILTIN_VARS and key not in state.variables
                                    and isinstance(value, str | int | float | bool)):
                                new[key] = str(value)[:500]
                        if store_as is not None and "value" in answer and isinstance(
                                answer["value"], str | int | float | bool):
                            new[store_as] = str(answer["value"])[:500]
                if not ok:
                    log.warning("flow webhook answered HTTP %d", response.status)
                return ok, new, None
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("flow webhook failed: %s", type(exc).__name__)
            return False, {}, None
        finally:
            if own:
                await session.close()

    # ------------------------------------------------------------------ database
    def _tx(self, fn: Callable[[Session], Any]) -> Any:
        with session_scope(self.engine) as session:
            return fn(session)

    def _spec(self, row: Flow) -> FlowSpec:
        key = (int(row.id or 0), row.updated_at.isoformat())
        spec = self._specs.get(key)
        if spec is None:
            spec = parse_flow(row.start_step, row.steps)
            self._specs = {k: v for k, v in self._specs.items() if k[0] != key[0]}
            self._specs[key] = spec
        return spec

    def _load_flow(self, flow: str | int) -> tuple[Flow, FlowSpec]:
        with session_scope(self.engine) as session:
            row = _flow_row(session, flow)
            if not row.enabled:
                raise FlowError(f"flow {row.name!r} is disabled", code="flow_disabled")
            session.expunge(row)
        return row, self._spec(row)

    def _create_run(self, flow: Flow, channel: str, conversation_id: int | None, call_id: int | None,
                    contact_id: int | None, state: FlowState) -> int:
        with session_scope(self.engine) as session:
            if conversation_id is not None:
                for old in session.exec(select(FlowRun).where(FlowRun.conversation_id == conversation_id,
                                                              FlowRun.status == "active")).all():
                    old.status, old.result, old.updated_at = "ended", "replaced", utcnow()
                    session.add(old)
            run = FlowRun(flow_id=int(flow.id or 0), flow_name=flow.name, channel=channel,
                          conversation_id=conversation_id, call_id=call_id, contact_id=contact_id,
                          step=state.step, state=state.to_json(), variables=dict(state.variables))
            session.add(run)
            session.flush()
            return int(run.id or 0)

    def _load_run(self, run_id: int) -> tuple[FlowEngine, FlowState, int]:
        with session_scope(self.engine) as session:
            run = session.get(FlowRun, run_id)
            if run is None:
                raise NotFound(f"flow run {run_id} does not exist")
            flow = session.get(Flow, run.flow_id) if run.flow_id is not None else None
            if flow is None:
                raise NotFound(f"the flow of run {run_id} was deleted")
            session.expunge(flow)
            state, version = FlowState.from_json(dict(run.state)), run.version
        spec = self._spec(flow)
        if state.step not in {s.id for s in spec.steps}:
            # The designer removed the step this run was at: end it rather than guess.
            state.waiting, state.result = "ended", "flow_changed"
        return FlowEngine(spec, flow.name, self._language(flow.agent_id)), state, version

    def _language(self, agent_id: int | None) -> str:
        """The language of the flow's agent ("en" when it has none)."""
        if agent_id is None:
            return "en"
        with session_scope(self.engine) as session:
            agent = session.get(Agent, agent_id)
            return agent.language if agent is not None else "en"

    def _store(self, run_id: int, state: FlowState, version: int) -> None:
        changes: dict[str, Any] = {"state": state.to_json(), "step": state.step, "variables": dict(state.variables),
                                   "version": version + 1, "updated_at": utcnow()}
        if state.ended:
            changes.update(status="ended", result=state.result)
        with session_scope(self.engine) as session:
            # Compare-and-set in one statement: of two workers that loaded the same version, one updates a row.
            done = session.execute(update(FlowRun).where(col(FlowRun.id) == run_id,
                                                         col(FlowRun.version) == version).values(**changes))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                if session.get(FlowRun, run_id) is None:
                    raise NotFound(f"flow run {run_id} does not exist")
                raise FlowConflict(f"flow run {run_id} was advanced by another worker")


def _ordered(spec: FlowSpec, variables: dict[str, str]) -> dict[str, str]:
    """The run's variables with the flow's own (collected or set by its steps) first: whoever keeps only the
    first N (the dialplan hand-back) keeps those."""
    own: list[str] = []
    for step in spec.steps:
        if step.collect is not None:
            own.append(step.collect.var)
        elif step.action is not None:
            own.extend((step.action.values or {}).keys())
            if step.action.store_as:
                own.append(step.action.store_as)
    first = {name: variables[name] for name in own if name in variables}
    return {**first, **{k: v for k, v in variables.items() if k not in first}}


def _log_orphan_failure(task: asyncio.Task[FlowReply]) -> None:
    """A settle whose caller was cancelled still has its failure logged (nobody else will see it)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("flow %s failed: %r", task.get_name(), task.exception())


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to ``limit`` bytes (it may arrive in any number of pieces)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16384):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _flow_row(session: Session, flow: str | int) -> Flow:
    row = session.get(Flow, flow) if isinstance(flow, int) else session.exec(
        select(Flow).where(Flow.name == flow)).first()
    if row is None:
        raise NotFound(f"flow {flow!r} does not exist", field="flow")
    return row
