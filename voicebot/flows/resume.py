"""Resuming a flow on a new call: a caller whose call dropped (or whose Eva was restarted) mid-flow and who
calls back continues at the step they were at.

Only a *verified* caller ID may take a run over (the call came in on a trunk the admin marked
``verified_caller_id``): on any other line the caller ID is whatever the caller claims, and continuing someone
else's half-finished booking -- their name, date and phone number in the flow's variables -- would hand that
data to whoever spoofs the number.  The run must be of the same flow, on the voice channel, for the same
contact, and touched within ``Settings.flow_resume_minutes``; otherwise the flow starts afresh.

The voice channel's flow responder calls :func:`start_call_flow` where a call starts its flow; the
runner's :meth:`~voicebot.flows.runner.FlowRunner.resume` re-asks the current step's question ("Welcome back.
...") and the next caller turn is answered at that step.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from models.db import session_scope
from voicebot.agent import store
from voicebot.errors import InvalidInput
from voicebot.flows.runner import ChannelActions, FlowReply, FlowRunner
from voicebot.pipeline.responder import CallContext

log = logging.getLogger(__name__)

CHANNEL = "voice"


@dataclass(frozen=True)
class CallFlowStart:
    reply: FlowReply
    resumed: bool
    """The call took over an earlier call's run (``reply`` re-asks its current step)."""
    contact_id: int | None


def call_contact(engine: Engine, ctx: CallContext) -> int | None:
    """Blocking: the contact of a verified caller ID (created when new), None for an unverified or anonymous
    caller."""
    if not ctx.caller_verified or not ctx.caller:
        return None
    with session_scope(engine) as session:
        try:
            return store.find_or_create_contact(session, phone=ctx.caller, verified=True).id
        except InvalidInput:
            return None  # a SIP user name rather than a number


async def start_call_flow(runner: FlowRunner, engine: Engine, ctx: CallContext, flow: str | int, *,
                          resume_minutes: float, conversation_id: int | None = None,
                          variables: dict[str, str] | None = None,
                          actions: ChannelActions | None = None) -> CallFlowStart:
    """Resume the verified caller's recent run of ``flow``, or start a new one for this call with ``variables``
    (a campaign contact's) set; a resumed run keeps the variables it already has."""
    contact_id = await asyncio.to_thread(call_contact, engine, ctx)
    if contact_id is not None and resume_minutes > 0:
        run_id = await runner.resumable_run(flow, contact_id, channel=CHANNEL, within_s=resume_minutes * 60.0)
        if run_id is not None:
            log.info("call %s resumes flow run %d", ctx.call_id, run_id)
            reply = await runner.resume(run_id, call_id=ctx.call_id, conversation_id=conversation_id)
            return CallFlowStart(reply, True, contact_id)
    # ``variables`` (a campaign contact's) come first: Eva's own caller and DID are never replaced by a column.
    start_vars = {**(variables or {}), "caller": ctx.caller, "did": ctx.did}
    reply = await runner.start(flow, channel=CHANNEL, conversation_id=conversation_id, call_id=ctx.call_id,
                               contact_id=contact_id, variables=start_vars, actions=actions)
    return CallFlowStart(reply, False, contact_id)
