"""The analysis worker: claims contacts' messages that have no analysis yet and stores what the model says of them.

Off the hot path: it asks the model only while no call is in progress and no generation is running or queued on
it (``busy()``), one message at a time, so a caller or chat user waits at most for the one analysis in hand (about
a second).  ``busy()`` sees this process's calls and model: with several Eva workers on one host, each has its own
model and cores to share, so run the analysis in one of them (``EVA_ANALYSIS=false`` in the others).
Durable and shared: a message is taken with an atomic conditional UPDATE (``analysis_status`` '' →
``claimed`` with a lease), so two workers on one database never analyse the same message, and one that died
holding a claim loses it when the lease ends.  A message the model cannot analyse is marked ``failed`` (with the
error code in the log), never retried in a loop.

Message states (``messages.analysis_status``): '' (not yet) → ``claimed`` → ``done`` | ``failed``; contacts'
messages only (``role == 'user'``), on every channel (call transcripts included).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, update
from sqlalchemy.engine import CursorResult, Engine
from sqlmodel import Session, col, select

from models import Category, Conversation, Message, utcnow
from models.db import session_scope
from voicebot.analysis.classifier import Analysis, Analyzer, CategorySpec
from voicebot.errors import EvaError
from voicebot.llm.base import LanguageModel
from voicebot.metrics import CALLS_ACTIVE

log = logging.getLogger(__name__)

CLAIMED = "claimed"
DONE = "done"
FAILED = "failed"
DEFAULT_LEASE = timedelta(minutes=5)


def model_busy(llm: LanguageModel) -> Callable[[], bool]:
    """The worker's ``busy()`` in ``eva run``: a call is up in this process, or a reply is generating or queued on
    its model (prompt evaluation included)."""
    return lambda: CALLS_ACTIVE.value() > 0 or llm.in_flight > 0


def load_categories(session: Session) -> list[CategorySpec]:
    rows = session.exec(select(Category).order_by(col(Category.id))).all()
    return [CategorySpec(r.name, r.description) for r in rows]


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def _claimable() -> Any:
    now = utcnow()
    return and_(col(Message.role) == "user", col(Message.text) != "",
                or_(col(Message.analysis_status) == "",
                    and_(col(Message.analysis_status) == CLAIMED, col(Message.analysis_lease_until) < now)))


def claim(session: Session, worker: str, limit: int, lease: timedelta = DEFAULT_LEASE) -> list[tuple[int, str]]:
    """Take up to ``limit`` messages for ``worker``, oldest first: (id, text) of each one taken."""
    candidates = session.exec(select(Message.id).where(_claimable()).order_by(col(Message.id)).limit(limit)).all()
    taken: list[tuple[int, str]] = []
    until = utcnow() + lease
    for message_id in candidates:
        result = session.execute(update(Message).where(col(Message.id) == message_id, _claimable())
                                 .values(analysis_status=CLAIMED, analysis_claimed_by=worker,
                                         analysis_lease_until=until)
                                 .execution_options(synchronize_session=False))
        if _rowcount(result) == 1:
            text = session.exec(select(Message.text).where(col(Message.id) == message_id)).one()
            taken.append((int(message_id or 0), text))
    return taken


def store(session: Session, message_id: int, worker: str, analysis: Analysis | None) -> bool:
    """Record the analysis (None: failed) if ``worker`` still holds the message (it may have been erased meanwhile);
    the conversation takes the message's category."""
    values: dict[str, Any] = {"analysis_status": FAILED, "analysis_claimed_by": "", "analysis_lease_until": None}
    if analysis is not None:
        values.update(analysis_status=DONE, sentiment=analysis.sentiment, category=analysis.category)
    result = session.execute(update(Message).where(col(Message.id) == message_id,
                                                   col(Message.analysis_status) == CLAIMED,
                                                   col(Message.analysis_claimed_by) == worker)
                             .values(**values).execution_options(synchronize_session=False))
    if _rowcount(result) != 1:
        return False
    if analysis is not None and analysis.category is not None:
        conversation_id = session.exec(select(Message.conversation_id).where(col(Message.id) == message_id)).one()
        session.execute(update(Conversation).where(col(Conversation.id) == conversation_id)
                        .values(category=analysis.category).execution_options(synchronize_session=False))
    return True


def record(session: Session, message_id: int, analysis: Analysis) -> None:
    """Store an analysis made outside the worker (e-mail triage), so the worker does not make it again."""
    session.execute(update(Message).where(col(Message.id) == message_id)
                    .values(analysis_status=DONE, sentiment=analysis.sentiment, category=analysis.category,
                            analysis_claimed_by="", analysis_lease_until=None)
                    .execution_options(synchronize_session=False))
    if analysis.category is not None:
        conversation_id = session.exec(select(Message.conversation_id).where(col(Message.id) == message_id)).first()
        if conversation_id is not None:
            session.execute(update(Conversation).where(col(Conversation.id) == conversation_id)
                            .values(category=analysis.category).execution_options(synchronize_session=False))


@dataclass
class Progress:
    done: int = 0
    failed: int = 0
    lost: int = 0
    """Claimed but gone or taken over before the result was stored (erased meanwhile)."""


class AnalysisWorker:
    """``start()`` runs it in the background; ``close()`` stops it after the message in hand (idempotent)."""

    def __init__(self, engine: Engine, analyzer: Analyzer, *, busy: Callable[[], bool] = lambda: False,
                 batch: int = 8, idle_seconds: float = 5.0, lease: timedelta = DEFAULT_LEASE) -> None:
        self.engine = engine
        self.analyzer = analyzer
        self.busy = busy
        self.batch = batch
        self.idle_seconds = idle_seconds
        self.lease = lease
        self.worker_id = f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _db(self, fn: Callable[[Session], Any]) -> Any:
        def transaction() -> Any:
            with session_scope(self.engine) as session:
                return fn(session)

        return await asyncio.to_thread(transaction)

    async def run_once(self) -> Progress:
        """Analyse up to ``batch`` messages, pausing while ``busy()``.  Each is claimed only once the model is free
        and analysed at once, so a claim never outlives its lease while the worker waits for a call to end."""
        progress = Progress()
        worker = self.worker_id
        categories: list[CategorySpec] = await self._db(load_categories)
        for _ in range(self.batch):
            while self.busy() and not self._stop.is_set():
                await self._sleep(0.5)
            if self._stop.is_set():
                break
            taken: list[tuple[int, str]] = await self._db(lambda s: claim(s, worker, 1, self.lease))
            if not taken:
                break
            ((message_id, text),) = taken

            def release(session: Session, m: int = message_id) -> None:
                self._release(session, [m])

            try:
                analysis = await self._analyze(message_id, text, categories)
            except asyncio.CancelledError:  # hand back what this worker holds, then stop
                await asyncio.shield(self._db(release))
                raise

            def keep(session: Session, m: int = message_id, a: Analysis | None = analysis) -> bool:
                return store(session, m, worker, a)

            if not await self._db(keep):
                progress.lost += 1
            elif analysis is None:
                progress.failed += 1
            else:
                progress.done += 1
        return progress

    async def _analyze(self, message_id: int, text: str, categories: list[CategorySpec]) -> Analysis | None:
        try:
            return await self.analyzer.analyze(text, categories)
        except EvaError as exc:
            log.warning("message %d could not be analysed: [%s]", message_id, exc.code)
            log.debug("message %d: %s", message_id, exc.message)  # an unreadable reply may echo the message
            return None

    def _release(self, session: Session, ids: list[int]) -> None:
        if ids:
            session.execute(update(Message).where(col(Message.id).in_(ids), col(Message.analysis_status) == CLAIMED,
                                                  col(Message.analysis_claimed_by) == self.worker_id)
                            .values(analysis_status="", analysis_claimed_by="", analysis_lease_until=None)
                            .execution_options(synchronize_session=False))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _forever(self) -> None:
        while not self._stop.is_set():
            try:
                progress = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database was unreachable, say: try again after a pause
                log.exception("the analysis worker's round failed")
                progress = Progress()
            if progress.done or progress.failed:
                log.debug("analysed %d messages (%d failed)", progress.done, progress.failed)
            else:
                await self._sleep(self.idle_seconds)

    async def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._forever(), name="analysis-worker")

    async def close(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, 30.0)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
