"""Workers sharing one Asterisk watch each other: the calls a dead worker left behind are closed.

Several Eva workers may share an Asterisk (``EVA_ARI_APPS``: one ARI application each; the dialplan's
``eva-stasis`` spreads new calls over them and skips one that is down).  A worker that crashes or is killed leaves
its callers in Stasis of an application nobody controls: they hear silence until they give up, and their call
rows stay open.  Asterisk cannot tell: it keeps a dead worker's application registered, with its channels, after
the websocket closed (measured on Asterisk 22: ``GET /applications`` still lists it).  So each worker writes a
heartbeat row every :data:`ROUND_S` (``worker_beats``, by the database's clock, so the hosts' clocks need not
agree), and once a peer's last beat is :data:`DEAD_AFTER_S` old (longer than any pause of a live worker's loop) a
live worker hangs up the channels still in that peer's application, destroys the bridges it created and closes
that worker's open call rows (outcome ``failed``, cause ``worker_lost``).  It judges only after its own beats have
gone through for that long: after a database outage every peer's beat is old, and none of them is dead.  The
caller hears the call end instead of silence and can call again: the next call reaches a live worker.

:class:`PeerTracker` is the pure part (which peers are dead, from their last beats), tested without sockets;
:class:`PeerWatch` is the loop that beats, feeds it from the database and acts through ARI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from voicebot.ari import AriClient
from voicebot.ari.events import stasis_location
from voicebot.calls import store as calls
from voicebot.errors import AriError, EvaError

log = logging.getLogger(__name__)

DEAD_AFTER_S = 15.0
"""A peer whose last heartbeat is this old is dead (its calls are closed)."""
ROUND_S = 3.0
"""Seconds between two heartbeats (and looks at the peers')."""


class PeerTracker:
    """Pure: which peers (ARI application names) are dead, from when each last beat."""

    def __init__(self, peers: Iterable[str], dead_after_s: float = DEAD_AFTER_S) -> None:
        self.peers = tuple(peers)
        self.dead_after_s = dead_after_s
        self._closed: dict[str, datetime] = {}
        """Peer → the last beat it was closed at (not closed again until it beats again and dies again)."""

    def observe(self, beats: Mapping[str, datetime], now: datetime, *, beating_since: datetime | None = None
                ) -> list[str]:
        """The peers to close now.  A peer with no beat at all never ran against this database: nothing of its
        is open.  ``beating_since``: since when this worker's own beats have gone through without a gap; nobody
        is judged before that is ``dead_after_s`` ago (the database, not the peers, may have been away)."""
        dead: list[str] = []
        if beating_since is not None and (now - beating_since).total_seconds() < self.dead_after_s:
            return dead
        for peer in self.peers:
            seen = beats.get(peer)
            if seen is None or (now - seen).total_seconds() < self.dead_after_s:
                continue
            if self._closed.get(peer) != seen:
                dead.append(peer)
        return dead

    def closed(self, peer: str, beats: Mapping[str, datetime]) -> None:
        """The peer's calls were closed at its last beat in ``beats``."""
        if peer in beats:
            self._closed[peer] = beats[peer]


def left_behind(channels: Sequence[dict[str, Any]], bridges: Sequence[dict[str, Any]],
                app: str) -> tuple[list[str], list[str]]:
    """Pure: (channel ids, bridge ids) application ``app`` holds: its channels in Stasis and its bridges."""
    channel_ids = [str(c.get("id", "")) for c in channels if stasis_location(c)[0] == app and c.get("id")]
    bridge_ids = [str(b.get("id", "")) for b in bridges if str(b.get("creator", "")) == app and b.get("id")]
    return channel_ids, bridge_ids


async def find_left(ari: AriClient, app: str) -> tuple[list[str], list[str]]:
    """What application ``app`` holds in Asterisk now (see :func:`left_behind`)."""
    return left_behind(await ari.channels(), await ari.request("GET", "bridges") or [], app)


async def end_left(ari: AriClient, left: tuple[list[str], list[str]]) -> None:
    """Hang up the channels and destroy the bridges :func:`find_left` found (those already gone are skipped)."""
    channel_ids, bridge_ids = left
    for channel_id in channel_ids:
        with contextlib.suppress(AriError):
            await ari.hangup(channel_id)
    for bridge_id in bridge_ids:
        with contextlib.suppress(AriError):
            await ari.destroy_bridge(bridge_id)


class PeerWatch:
    """Closes the calls of dead peers (see the module docstring).  ``start()`` runs it in a named task;
    ``close()`` is idempotent."""

    def __init__(self, ari: AriClient, engine: Engine, peers: Iterable[str], *, worker: str = "",
                 round_s: float = ROUND_S, dead_after_s: float = DEAD_AFTER_S) -> None:
        self.ari = ari
        self.engine = engine
        self.worker = worker or ari.app
        self.tracker = PeerTracker(peers, dead_after_s)
        self.round_s = round_s
        self._beating_since: datetime | None = None
        """Database time of the first of this worker's beats that have gone through without a gap."""
        self._last_beat: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed_calls = 0
        """Call rows closed for dead peers since start (tests and logs)."""

    def start(self) -> None:
        if self._task is None and self.tracker.peers:
            self._task = asyncio.create_task(self._run(), name=f"peer-watch-{self.ari.app}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.look()
            except (AriError, EvaError) as exc:  # Asterisk or the database away: look again next round
                log.warning("peer watch: [%s] %s", exc.code, exc.message)
            except Exception:  # a bug or a database error must not end the watch
                self._beating_since = None
                log.exception("peer watch failed")
            await asyncio.sleep(self.round_s)

    async def beat_now(self) -> dict[str, tuple[str, datetime]]:
        """Write this worker's heartbeat (when it has peers); returns every worker's last beat."""
        if not self.tracker.peers:
            return {}
        try:
            now, beats = await asyncio.to_thread(calls.beat, self.engine, self.ari.app, self.worker)
        except Exception:
            self._beating_since = None
            raise
        gap = self._last_beat is None or (now - self._last_beat).total_seconds() > 2 * self.round_s + 1
        if self._beating_since is None or gap:
            self._beating_since = now
        self._last_beat = now
        return beats

    async def look(self) -> list[str]:
        """One round: beat, then close the peers found dead; returns them."""
        beats = await self.beat_now()
        if self._last_beat is None:
            return []
        seen = {app: when for app, (_worker, when) in beats.items()}
        dead = self.tracker.observe(seen, self._last_beat, beating_since=self._beating_since)
        for peer in dead:
            await self._close_peer(peer, beats[peer][0])
            self.tracker.closed(peer, seen)
        return dead

    async def _close_peer(self, peer: str, worker: str) -> None:
        channel_ids, bridge_ids = left = await find_left(self.ari, peer)
        await end_left(self.ari, left)
        closed = await asyncio.to_thread(calls.close_lost_calls, self.engine, worker)
        self.closed_calls += closed
        log.warning("worker %r is gone: hung up %d channel(s), destroyed %d bridge(s), closed %d call(s)", peer,
                    len(channel_ids), len(bridge_ids), closed)
