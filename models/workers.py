"""Workers sharing one Asterisk: each one's heartbeat, so the others can tell when it died.

Asterisk keeps an ARI application registered (with its channels) after its websocket closes, so whether a worker
is alive cannot be read from Asterisk's list of applications; a row per worker, written every few seconds, is
what the others watch (:mod:`voicebot.calls.peers`).
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from models.base import utcnow


class WorkerBeat(SQLModel, table=True):
    __tablename__ = "worker_beats"

    app: str = Field(primary_key=True, max_length=40)
    """The worker's ARI application name (unique among the workers sharing this database)."""
    worker: str = Field(default="", max_length=300)
    """``host:app``, as on the call rows it writes."""
    seen_at: datetime = Field(default_factory=utcnow)
    """When it last said it was alive, by the database's clock (so the hosts' clocks need not agree)."""
