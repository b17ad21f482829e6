"""The process's live events: what calls and conversations do, as they do it, for whoever watches (the console).

The call store publishes after it commits (``voicebot.calls.store``), and every committed message row is announced
by session hooks (``watch_messages``), so a watcher hears exactly what the database now holds, from the code path
that wrote it: no polling of tables.  Publishing is
thread-safe and never blocks (the stores run on worker threads): each subscriber has a bounded queue on its own
event loop, and a subscriber that falls behind loses its oldest events and is told so (``lagged``), rather than
making a call wait or memory grow.  Events carry ids and states, never caller data (numbers, words): a watcher
that wants those reads them through the API, with its role checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

QUEUE_SIZE = 256
"""Events one subscriber may have waiting; beyond it the oldest are dropped (the console refetches anyway)."""
MAX_SUBSCRIBERS = 64
"""Open watchers at once: each holds a queue; a 65th is refused (the console says so) instead of growing memory."""
MAX_PER_OWNER = 8
"""Open watchers of one user or key: one viewer's script cannot take every place and lock the others out."""


@dataclass(frozen=True)
class Event:
    kind: str
    """``call.started``, ``call.answered``, ``call.turn``, ``call.ended``, ``message.stored``."""
    data: dict[str, Any]
    at: float = field(default_factory=time.time)


class TooManyWatchers(Exception):
    """More than ``MAX_SUBSCRIBERS`` watchers at once."""


class Subscription:
    """One watcher: its queue, and how many events it lost for falling behind (it is told, and refetches)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: str) -> None:
        self.loop = loop
        self.owner = owner
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        """On the subscriber's loop: queue the event, dropping the oldest when full."""
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


class EventHub:
    """Fan-out of events to the watchers of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []

    def publish(self, kind: str, **data: Any) -> None:
        """Tell every watcher; callable from any thread, returns at once."""
        event = Event(kind, data)
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.offer, event)
            except RuntimeError:  # its loop closed under it: it is going away
                continue

    @property
    def watchers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(self, owner: str = "") -> AsyncIterator[Subscription]:
        """The events published from now on (``.queue``), until the block ends.  ``owner`` (a user or key) may
        hold at most ``MAX_PER_OWNER`` of the ``MAX_SUBSCRIBERS`` places."""
        sub = Subscription(asyncio.get_running_loop(), owner)
        with self._lock:
            if len(self._subscribers) >= MAX_SUBSCRIBERS:
                raise TooManyWatchers(f"{MAX_SUBSCRIBERS} watchers are already connected")
            if owner and sum(1 for s in self._subscribers if s.owner == owner) >= MAX_PER_OWNER:
                raise TooManyWatchers(f"you already watch {MAX_PER_OWNER} event streams: close one (a tab)")
            self._subscribers.append(sub)
        try:
            yield sub
        finally:
            with self._lock:
                self._subscribers.remove(sub)


HUB = EventHub()
"""The process's hub: the stores publish to it, the console's event stream reads it."""


def publish(kind: str, **data: Any) -> None:
    """Publish on the process's hub (see ``EventHub.publish``)."""
    HUB.publish(kind, **data)


_watching = {"messages": False}
_watch_lock = threading.Lock()


def watch_messages() -> None:
    """Publish ``message.stored`` for every message row committed in this process, whichever code wrote it
    (the agent core, a channel, an admin): SQLAlchemy session hooks note new rows at flush and publish them
    once their transaction commits (a rolled-back row is never announced).  Idempotent."""
    with _watch_lock:
        if _watching["messages"]:
            return
        _watching["messages"] = True
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from models import Message

    key = "eva_new_messages"

    @event.listens_for(Session, "after_flush")
    def _noted(session: Session, _context: Any) -> None:
        new = [(m.id, m.conversation_id, m.role) for m in session.new if isinstance(m, Message)]
        if new:
            session.info.setdefault(key, []).extend(new)

    @event.listens_for(Session, "after_commit")
    def _committed(session: Session) -> None:
        for message_id, conversation_id, role in session.info.pop(key, ()):
            publish("message.stored", message_id=message_id, conversation_id=conversation_id, role=role)

    @event.listens_for(Session, "after_rollback")
    def _rolled_back(session: Session) -> None:
        session.info.pop(key, None)
