"""Blocking persistence of calls and turns (the async code calls these through ``asyncio.to_thread``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models import Call, CallTurn, SipTrunk, WorkerBeat, as_utc, utcnow
from models.calls import CALLER_MAX
from models.db import session_scope
from voicebot.events import publish


@dataclass
class TurnRecord:
    index: int
    kind: str = "speech"
    user_text: str = ""
    bot_text: str = ""
    spoken_text: str = ""
    interrupted: bool = False
    speech_end: datetime | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    prompt_tokens_evaluated: int | None = None
    prompt_eval_ms: float | None = None
    variables: dict[str, str] | None = None
    """A flow's variables after this turn (None when no flow ran)."""


TIMING_FIELDS = ("stt_done", "llm_first_token", "first_sentence_ready", "tts_first_audio", "first_frame_out")


def create_call(engine: Engine, *, channel_id: str, caller: str, did: str, agent_id: int | None,
                direction: str = "inbound", worker: str = "") -> tuple[int, int]:
    """A new call row for this Stasis session of ``channel_id``; returns (call id, generation).

    The generation is one more than the channel's last session (a transfer into a number Eva handles brings
    the same channel back), read from the database so any worker numbers it alike.  Caller ID and DID come
    from the SIP peer and are cut to the column size: an over-long one must not stop the call being answered."""
    with session_scope(engine) as session:
        last = session.exec(select(func.max(Call.generation)).where(Call.channel_id == channel_id)).one()
        generation = 0 if last is None else int(last) + 1
        call = Call(channel_id=channel_id, generation=generation, caller=caller[:CALLER_MAX],
                    did=did[:CALLER_MAX], agent_id=agent_id, direction=direction, worker=worker)
        session.add(call)
        session.flush()
        assert call.id is not None
        call_id = call.id
    publish("call.started", call_id=call_id, agent_id=agent_id, direction=direction)  # after the commit
    return call_id, generation


def mark_answered(engine: Engine, call_id: int, recording_path: str = "") -> None:
    with session_scope(engine) as session:
        call = session.get(Call, call_id)
        if call is not None:
            call.answered_at = utcnow()
            call.recording_path = recording_path
    publish("call.answered", call_id=call_id)


def add_turn(engine: Engine, call_id: int, turn: TurnRecord) -> int:
    with session_scope(engine) as session:
        row = CallTurn(call_id=call_id, index=turn.index, kind=turn.kind, user_text=turn.user_text,
                       bot_text=turn.bot_text, spoken_text=turn.spoken_text, interrupted=turn.interrupted,
                       speech_end=turn.speech_end, prompt_tokens_evaluated=turn.prompt_tokens_evaluated,
                       prompt_eval_ms=turn.prompt_eval_ms,
                       variables=dict(turn.variables) if turn.variables is not None else None)
        for name in TIMING_FIELDS:
            value = turn.timings_ms.get(name)
            setattr(row, f"{name}_ms", None if value is None else round(value, 1))
        session.add(row)
        session.flush()
        assert row.id is not None
        turn_id = row.id
    publish("call.turn", call_id=call_id, turn_id=turn_id, index=turn.index, interrupted=turn.interrupted)
    return turn_id


def end_call(engine: Engine, call_id: int, *, outcome: str, cause: str = "") -> None:
    """Close the call row.  An outcome already set to something final (e.g. transferred) is kept."""
    with session_scope(engine) as session:
        call = session.get(Call, call_id)
        if call is None:
            return
        if call.ended_at is None:
            call.ended_at = utcnow()
        if call.outcome in ("active", "") or outcome in ("failed",):
            call.outcome = outcome
        if cause and not call.hangup_cause:
            call.hangup_cause = cause
        final = call.outcome
    publish("call.ended", call_id=call_id, outcome=final)


def end_call_by_channel(engine: Engine, channel_id: str, *, outcome: str, cause: str = "",
                        after: datetime | None = None) -> None:
    """Close the channel's still-open row created at or after ``after`` (the session that was hung up while
    its row was being created).  Rows of the channel's earlier sessions are never touched: their outcome
    (e.g. ``transferred``) is history."""
    with session_scope(engine) as session:
        query = select(Call).where(Call.channel_id == channel_id, Call.ended_at == None)  # noqa: E711
        if after is not None:
            query = query.where(Call.started_at >= after)
        call = session.exec(query.order_by(col(Call.generation).desc())).first()
        call_id = call.id if call is not None else None
    if call_id is not None:
        end_call(engine, call_id, outcome=outcome, cause=cause)


def caller_id_verified(engine: Engine, endpoint: str) -> bool:
    """True when ``endpoint`` is an enabled admin-managed trunk marked as delivering verified caller IDs."""
    name = endpoint.removeprefix("trunk-")
    if not endpoint.startswith("trunk-") or not name:
        return False
    with session_scope(engine) as session:
        trunk = session.exec(select(SipTrunk).where(SipTrunk.name == name)).first()
        return bool(trunk is not None and trunk.enabled and trunk.verified_caller_id)


def database_now(session: Session) -> datetime:
    """The database server's clock (UTC): what every worker's heartbeat is written and judged by, so the hosts'
    own clocks need not agree."""
    value = session.execute(select(func.current_timestamp())).scalar_one()
    if isinstance(value, str):  # SQLite: 'YYYY-MM-DD HH:MM:SS' in UTC
        value = datetime.fromisoformat(value)
    return as_utc(value)


def beat(engine: Engine, app: str, worker: str) -> tuple[datetime, dict[str, tuple[str, datetime]]]:
    """Record that worker ``app`` (``host:app``) is alive now; returns the database's time and every worker's
    last beat (app → (worker, when)), both by the database's clock."""
    with session_scope(engine) as session:
        now = database_now(session)
        row = session.get(WorkerBeat, app)
        if row is None:
            session.add(WorkerBeat(app=app, worker=worker, seen_at=now))
        else:
            row.worker, row.seen_at = worker, now
        session.flush()
        return now, {b.app: (b.worker, as_utc(b.seen_at)) for b in session.exec(select(WorkerBeat)).all()}


def close_lost_calls(engine: Engine, worker: str) -> int:
    """The open calls of a dead peer (``host:app``, as its heartbeat names it) are closed as failed, cause
    ``worker_lost`` (see :mod:`voicebot.calls.peers`)."""
    return _close_open_calls(engine, worker, "worker_lost")


def _close_open_calls(engine: Engine, worker: str, cause: str) -> int:
    """Every call row ``worker`` left open is closed as failed with ``cause`` (and announced)."""
    with session_scope(engine) as session:
        rows = session.exec(select(Call).where(Call.worker == worker, Call.ended_at == None)).all()  # noqa: E711
        for call in rows:
            call.ended_at = utcnow()
            call.outcome = "failed"
            call.hangup_cause = call.hangup_cause or cause
        ids = [int(call.id or 0) for call in rows]
    for call_id in ids:
        publish("call.ended", call_id=call_id, outcome="failed")
    return len(ids)


def close_orphans(engine: Engine, worker: str) -> int:
    """Calls this worker left 'active' (crash, kill -9) are closed as failed on start: nothing stays open."""
    return _close_open_calls(engine, worker, "eva_restart")
