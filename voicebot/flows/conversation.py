"""Flows on the text channels (WhatsApp, e-mail): which inbound message a flow answers, and its turn stored.

:meth:`ConversationFlows.handle` is called by a text channel for each inbound message, before the agent:

1. the conversation has an active run -> the message is that run's input;
2. else the conversation is new (no messages yet) and the agent has ``start_flow`` -> that flow starts;
3. else one of the agent's ``flow_triggers`` phrases is in the message -> that flow starts;
4. else ``None``: the agent answers as it always did.  (So once a run ends, the agent carries on.)

The run's requests for the agent (``ask_agent``, a turn of an ``agent`` handover) are answered by the real
:class:`~voicebot.agent.core.AgentCore` in the same conversation (its memory, persona and knowledge), through
:meth:`FlowRunner.drive`.  Everything said in one turn -- the flow's texts and the agent's answers -- is one
reply, stored as the conversation's user + assistant messages in one transaction, exactly like an agent turn
(the user message carries the channel's message id).  The agent's own intermediate message rows are folded
into that reply (their citations kept), so history and memory read like the conversation that took place.

Because the turn is that pair of messages, the channels' exactly-once machinery works unchanged: a turn stored
but not sent is sent as stored, an answered one is never answered again.  The one window it cannot see is a
crash after the run advanced but before the turn was stored: then the message comes again (unanswered), and
feeding it again would answer the next step's question with it.  That state is recognised (the run was
stored after the conversation's last message): the message is not fed again, the run's pending agent request
is completed, or its current question asked again.

On a text channel there is no call to transfer: a ``transfer`` action to one of the agent's transfer targets
ends the run as ``transferred`` with a hand-over note in the reply (the assistant message's timings carry
``handover``, for the person who takes over).  ``hang_up`` just ends the run.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models import Agent, Contact, Conversation, Flow, FlowRun, Message, as_utc, utcnow
from models.db import session_scope
from voicebot.agent.core import SEARCH_KNOWLEDGE, AgentCore
from voicebot.errors import NotFound
from voicebot.flows.engine import AgentTurn, AskAgent, FlowState, Say
from voicebot.flows.runner import FlowError, FlowReply, FlowRunner, SendMessage
from voicebot.flows.spec import fill, parse_flow
from voicebot.flows.triggers import trigger_for

log = logging.getLogger(__name__)

MAX_TEXT = 8000
"""Inbound text handed to a flow (the agent core's own limit)."""
HANDOVER_NOTE = "I have passed this conversation on to {target}; a person will reply here."


@dataclass(frozen=True)
class FlowTurn:
    """One inbound message answered by a flow (its messages are stored)."""

    conversation_id: int
    user_message_id: int
    assistant_message_id: int
    text: str
    """The whole reply, to send once."""
    run_id: int
    flow: str
    step: str
    ended: bool
    result: str | None
    variables: dict[str, str]
    handover: str | None = None
    """The transfer target of a run that ended in a hand-over (text channels cannot transfer)."""


class TextChannelActions:
    """What a flow may ask of a text channel: a transfer is accepted for the agent's known targets (by name or
    extension) and becomes a hand-over note; anything else is refused (the step's fallback runs)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.handover: str | None = None

    async def check_transfer(self, target: str) -> str | None:
        wanted = target.strip().lower()
        for name, extension in (self.agent.transfer_targets or {}).items():
            if wanted in (name.strip().lower(), str(extension).strip().lower()):
                self.handover = name
                return name
        log.info("flow transfer to %r refused: not one of agent %s's transfer targets", target, self.agent.name)
        return None


@dataclass
class _Situation:
    """What the database says about the conversation before the message is handled."""

    is_new: bool
    run_id: int | None = None
    flow_name: str = ""
    state: FlowState | None = None
    stale: bool = False
    """The run was stored after the conversation's last message: its last input's turn was never stored."""


@dataclass
class _AgentAnswers:
    message_ids: list[int] = field(default_factory=list)
    citations: list[dict[str, Any]] = field(default_factory=list)


def _situation(session: Session, conversation_id: int) -> _Situation:
    last = session.exec(select(Message).where(Message.conversation_id == conversation_id)
                        .order_by(col(Message.created_at).desc(), col(Message.id).desc())).first()
    run = session.exec(select(FlowRun).where(FlowRun.conversation_id == conversation_id, FlowRun.status == "active")
                       .order_by(col(FlowRun.id).desc())).first()
    found = _Situation(is_new=last is None)
    if run is None or run.id is None:
        return found
    found.run_id, found.flow_name = run.id, run.flow_name
    found.state = FlowState.from_json(dict(run.state))
    found.stale = last is None or as_utc(run.updated_at) > as_utc(last.created_at)
    return found


def _store_turn(session: Session, conversation_id: int, text: str, external_id: str, reply: str,
                timings: dict[str, Any], answers: _AgentAnswers) -> tuple[int, int]:
    """The turn's user + assistant messages; the agent's intermediate rows folded into them (one transaction)."""
    for message_id in answers.message_ids:
        message = session.get(Message, message_id)
        if message is not None and message.conversation_id == conversation_id:
            session.delete(message)
    session.flush()
    user = Message(conversation_id=conversation_id, role="user", text=text, external_id=external_id[:255])
    session.add(user)
    session.flush()
    assistant = Message(conversation_id=conversation_id, role="assistant", text=reply, timings=timings,
                        citations=answers.citations or None)
    session.add(assistant)
    conversation = session.get(Conversation, conversation_id)
    if conversation is not None:
        conversation.updated_at = utcnow()
        session.add(conversation)
    session.flush()
    assert user.id is not None and assistant.id is not None
    return user.id, assistant.id


class ConversationFlows:
    """One per process, shared by the text channels."""

    def __init__(self, engine: Engine, core: AgentCore, runner: FlowRunner | None = None, *,
                 send_message: SendMessage | None = None) -> None:
        self.engine = engine
        self.core = core
        self.runner = runner or FlowRunner(engine, llm=core.llm, send_message=send_message)

    async def _db(self, fn: Any) -> Any:
        def transaction() -> Any:
            with session_scope(self.engine) as session:
                return fn(session)

        return await asyncio.to_thread(transaction)

    async def handle(self, agent: Agent, contact: Contact | None, channel: str, text: str, *,
                     conversation_id: int, external_id: str = "", caller: str = "") -> FlowTurn | None:
        """Answer ``text`` with a flow (see the module docstring), or None when the agent answers it."""
        text = text.strip()[:MAX_TEXT]
        if not text:
            return None
        situation: _Situation = await self._db(lambda s: _situation(s, conversation_id))
        actions = TextChannelActions(agent)
        answers = _AgentAnswers()

        async def ask_agent(question: str) -> str:
            # A handover turn carries the message cut to the engine's input limit: the agent reads all of it.
            question = text if question and text.startswith(question) else question
            done = await self.core.respond(agent, contact, channel, question[:MAX_TEXT],
                                           conversation_id=conversation_id, tools=(SEARCH_KNOWLEDGE,))
            answers.message_ids += [done.user_message_id, done.assistant_message_id]
            answers.citations += [c.to_dict() for c in done.citations]
            return done.text

        reply: FlowReply | None
        flow_name = situation.flow_name
        if situation.run_id is not None:
            try:
                reply = await self._continue(situation, text, actions)
            except NotFound as exc:
                # The run's flow was deleted under it: end the run, so the agent answers from now on.
                run_id = situation.run_id
                log.warning("flow run %d ended: [%s] %s", run_id, exc.code, exc.message)
                await self._db(lambda s: _end_run(s, run_id, "flow_deleted"))
                return None
        else:
            flow_name = (agent.start_flow if situation.is_new and agent.start_flow
                         else trigger_for(agent.flow_triggers or {}, text)) or ""
            if not flow_name:
                return None
            reply = await self._start(flow_name, agent, channel, conversation_id, contact, caller, actions)
            if reply is None:
                return None
        reply = await self.runner.drive(reply, ask_agent, actions=actions)
        if not reply.ended and reply.agent_request is None and not reply.says and situation.run_id is not None:
            # Input the run did not wait for (nothing to say): ask its question again rather than stay silent.
            again = await self._current_question(reply.run_id)
            if again is not None:
                reply.says.append(again)
        parts = [reply.text]
        if reply.after is not None and reply.after[0] == "transfer" and actions.handover:
            parts.append(HANDOVER_NOTE.format(target=actions.handover))
        said = " ".join(p for p in parts if p).strip()
        if not said:
            if reply.ended:
                return None  # the run ended without a word: the agent answers this message
            said = agent.fallback_message
        timings: dict[str, Any] = {"flow": flow_name, "flow_run": reply.run_id, "flow_step": reply.step}
        if reply.ended:
            timings["flow_result"] = reply.result
        if actions.handover and reply.result == "transferred":
            timings["handover"] = actions.handover
        user_id, assistant_id = await self._db(
            lambda s: _store_turn(s, conversation_id, text, external_id, said, timings, answers))
        log.info("flow %s answered a %s message (run %d, step %s%s)", flow_name, channel, reply.run_id, reply.step,
                 f", ended: {reply.result}" if reply.ended else "")
        return FlowTurn(conversation_id, user_id, assistant_id, said, reply.run_id, flow_name, reply.step,
                        reply.ended, reply.result, dict(reply.variables),
                        actions.handover if reply.result == "transferred" else None)

    async def _start(self, flow_name: str, agent: Agent, channel: str, conversation_id: int,
                     contact: Contact | None, caller: str, actions: TextChannelActions) -> FlowReply | None:
        try:
            return await self.runner.start(flow_name, channel=channel, conversation_id=conversation_id,
                                           contact_id=contact.id if contact else None,
                                           variables={"caller": caller}, actions=actions)
        except (NotFound, FlowError) as exc:
            # A misnamed or disabled flow is the designer's to fix; the customer still gets the agent.
            log.warning("agent %s: flow %r cannot start: [%s] %s", agent.name, flow_name, exc.code, exc.message)
            return None

    async def _continue(self, situation: _Situation, text: str, actions: TextChannelActions) -> FlowReply:
        assert situation.run_id is not None and situation.state is not None
        run_id, state = situation.run_id, situation.state
        waiting_for_agent = state.waiting in ("ask_agent", "agent")
        if not situation.stale and not waiting_for_agent:
            return await self.runner.answer(run_id, text, actions=actions)
        # The run moved on without its turn being stored (a crash in between), or it still waits for an agent
        # answer that was lost: the input was fed already.  Complete what is pending, or ask again.
        log.warning("flow run %d: the reply to its last input was never stored; not feeding it again", run_id)
        reply = FlowReply(run_id=run_id, step=state.step, variables=dict(state.variables))
        flow = await self._db(lambda s: _detached(s, Flow, _flow_id(s, run_id)))
        if flow is None:
            raise NotFound(f"the flow of run {run_id} was deleted")
        spec = parse_flow(flow.start_step, flow.steps)
        step = spec.step(state.step) if state.step in {s.id for s in spec.steps} else None
        if step is None:
            return await self.runner.answer(run_id, text, actions=actions)  # the runner ends it (flow_changed)
        if state.waiting == "ask_agent" and step.ask_agent is not None:
            reply.agent_request = AskAgent(fill(step.ask_agent, state.variables))
        elif state.waiting == "agent":
            reply.agent_request = AgentTurn(state.variables.get("last_input", "") or text)
        elif step.say:
            reply.says.append(Say(fill(step.say, state.variables)))
        return reply

    async def _current_question(self, run_id: int) -> Say | None:
        def load(session: Session) -> Say | None:
            run = session.get(FlowRun, run_id)
            flow = session.get(Flow, run.flow_id) if run is not None and run.flow_id is not None else None
            if run is None or flow is None or run.status != "active":
                return None
            state = FlowState.from_json(dict(run.state))
            spec = parse_flow(flow.start_step, flow.steps)
            if state.waiting != "input" or state.step not in {s.id for s in spec.steps}:
                return None
            say = spec.step(state.step).say
            return Say(fill(say, state.variables)) if say else None

        result: Say | None = await self._db(load)
        return result


def _end_run(session: Session, run_id: int, result: str) -> None:
    run = session.get(FlowRun, run_id)
    if run is not None and run.status == "active":
        run.status, run.result, run.updated_at = "ended", result, utcnow()
        session.add(run)


def _flow_id(session: Session, run_id: int) -> int | None:
    run = session.get(FlowRun, run_id)
    return run.flow_id if run is not None else None


def _detached(session: Session, model: type[Flow], row_id: int | None) -> Flow | None:
    row = session.get(model, row_id) if row_id is not None else None
    if row is not None:
        session.expunge(row)
    return row
