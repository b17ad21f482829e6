"""Do-not-call on a campaign call: a responder wrapper that hears an opt-out and ends the call.

The dialer registers :func:`dnc_guard` for each channel it originates (``VoiceApp.responder_wrappers``); when the
call is answered the voice app wraps the call's responder with it.  Every caller turn is checked with
:func:`voicebot.campaigns.dnc.asks_not_to_be_contacted` *before* the agent sees it: on a match the number goes on
the global do-not-call list (source ``phrase``), the callee hears a short apology and goodbye in the agent's
language, and Eva hangs up (the agent is not asked: an opt-out must not depend on what a model makes of it).
A campaign with an ``opt_out_digit`` takes that key, pressed alone, the same way (source ``dtmf``).
Later attempts for the number are then skipped (``dnc_skipped``) by every campaign.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from models.db import session_scope
from voicebot.campaigns import store
from voicebot.campaigns.dnc import asks_not_to_be_contacted
from voicebot.errors import EvaError
from voicebot.i18n import phrase
from voicebot.pipeline.dtmf import dtmf_turn_keys
from voicebot.pipeline.responder import (
    CallContext,
    CallerInput,
    InputResponder,
    ReplyDone,
    ReplyEvent,
    Responder,
    TextDelta,
    ToolCall,
)

log = logging.getLogger(__name__)

GOODBYE_KEY = "campaign_call_opted_out"


def _block(engine: Engine, phone: str, call_id: int, source: str) -> bool:
    with session_scope(engine) as session:
        how = "pressed the opt-out key" if source == "dtmf" else "said"
        _entry, new = store.add_dnc(session, phone, source=source, note=f"{how} on call {call_id}"[:200],
                                    now=datetime.now(UTC))
        return new


class DncGuard:
    """Wraps a call's responder; see the module."""

    def __init__(self, inner: Responder, engine: Engine, phone: str, language: str, opt_out_digit: str = "") -> None:
        self.inner = inner
        self.engine = engine
        self.phone = phone
        self.language = language
        self.opt_out_digit = opt_out_digit
        self.opted_out = False

    def _is_opt_out_key(self, keys: str) -> bool:
        return bool(self.opt_out_digit) and keys == self.opt_out_digit

    async def _opt_out(self, ctx: CallContext, source: str = "phrase") -> AsyncIterator[ReplyEvent]:
        self.opted_out = True
        try:
            await asyncio.wait_for(asyncio.to_thread(_block, self.engine, self.phone, ctx.call_id, source), 30)
            log.info("call %s: the callee asked not to be called again; on the do-not-call list", ctx.call_id)
        except (EvaError, TimeoutError, OSError) as exc:  # still say goodbye and hang up: they asked us to stop
            log.error("call %s: could not record the opt-out: %s", ctx.call_id, exc)
        goodbye = phrase(GOODBYE_KEY, ctx.language or self.language)
        yield TextDelta(goodbye)
        yield ToolCall("hang_up")
        yield ReplyDone(text=goodbye)

    def respond(self, ctx: CallContext, text: str) -> AsyncIterator[ReplyEvent]:
        if not self.opted_out:
            keys = dtmf_turn_keys(text)  # a plain responder hears keys as a turn's text
            if keys is not None and self._is_opt_out_key(keys):
                return self._opt_out(ctx, "dtmf")
            if keys is None and asks_not_to_be_contacted(text, ctx.language or self.language):
                return self._opt_out(ctx)
        return self.inner.respond(ctx, text)

    async def mark_interrupted(self, ctx: CallContext, message_id: int | None, spoken_text: str) -> None:
        await self.inner.mark_interrupted(ctx, message_id, spoken_text)

    def forget(self, call_id: int) -> None:
        forget = getattr(self.inner, "forget", None)
        if callable(forget):
            forget(call_id)


class DncGuardInput(DncGuard):
    """The same around a flow-aware responder (it keeps the session's flow handling)."""

    def respond_input(self, ctx: CallContext, event: CallerInput) -> AsyncIterator[ReplyEvent]:
        if event.kind == "dtmf" and not self.opted_out and self._is_opt_out_key(event.keys):
            return self._opt_out(ctx, "dtmf")
        if (event.kind == "speech" and not self.opted_out
                and asks_not_to_be_contacted(event.text, ctx.language or self.language)):
            return self._opt_out(ctx)
        assert isinstance(self.inner, InputResponder)
        return self.inner.respond_input(ctx, event)


def dnc_guard(engine: Engine, phone: str, language: str,
              opt_out_digit: str = "") -> Callable[[Responder], Responder]:
    """The wrapper the voice app applies to an answered campaign call's responder."""
    def wrap(inner: Responder) -> Responder:
        if isinstance(inner, InputResponder):
            return DncGuardInput(inner, engine, phone, language, opt_out_digit)
        return DncGuard(inner, engine, phone, language, opt_out_digit)

    return wrap
