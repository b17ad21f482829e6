"""Two Eva workers on one Asterisk and one database: calls are spread over both and each is answered once; when
a worker dies mid-call, the other closes what it left (the caller is hung up, the row closed) and takes every new
call.

The second worker is a :class:`VoiceApp` under its own ARI application (``eva-w2``) sharing the runtime's models
and database, reached through a TCP proxy the test can cut.  A worker "dies" as a killed process does: its
websocket closes (the cut), its heartbeat stops, and nobody hangs anything up.  The dialplan's ``eva-stasis`` picks the
worker from ``EVA_APPS``, set here as Asterisk's global for the test.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from sqlmodel import col, select

from models import Call
from models.db import session_scope
from tests.conftest import Caller
from tests.voice.test_call_endings import SECOND_APP, CuttableProxy, SecondWorker
from voicebot.asterisk.process import Asterisk
from voicebot.calls.peers import PeerWatch
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async
from voicebot.voiceapp import VoiceApp

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

DEAD_AFTER_S = 2.0
"""The main worker's grace for a missing peer in these tests (15 s in production)."""


@dataclass
class Pair:
    runtime: EvaRuntime
    asterisk: Asterisk
    main: VoiceApp
    second: VoiceApp
    workers: SecondWorker

    def apps(self, *names: str) -> None:
        """Which workers the dialplan offers calls to (Asterisk's global EVA_APPS)."""
        self.asterisk.cli(f"dialplan set global EVA_APPS {','.join(names)}")


@pytest_asyncio.fixture(loop_scope="session")
async def pair(runtime: EvaRuntime, asterisk: Asterisk) -> AsyncIterator[Pair]:
    assert runtime.voice is not None and runtime.engine is not None
    main = runtime.voice
    s = runtime.settings
    proxy = CuttableProxy(s.asterisk_host or s.bind_host, s.ari_port)
    await proxy.start()
    workers = SecondWorker(runtime, proxy)
    workers.settings = workers.settings.with_(ari_apps=f"{main.ari.app},{SECOND_APP}")
    second = workers.app()
    # Both watch each other with a short grace (the second's watch beats for it, as in production).
    second.peers = PeerWatch(second.ari, runtime.engine, [main.ari.app], worker=second.worker, round_s=0.3,
                             dead_after_s=DEAD_AFTER_S)
    await second.start()
    original_watch = main.peers
    main.peers = PeerWatch(main.ari, runtime.engine, [SECOND_APP], worker=main.worker, round_s=0.3,
                           dead_after_s=DEAD_AFTER_S)
    main.peers.start()
    made = Pair(runtime, asterisk, main, second, workers)
    made.apps(main.ari.app, SECOND_APP)
    try:
        yield made
    finally:
        made.apps(main.ari.app)
        await main.peers.close()
        main.peers = original_watch
        for app in workers.apps:
            await app.close()
        await proxy.close()


def _rows_since(runtime: EvaRuntime, after_id: int) -> list[Call]:
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        rows = list(session.exec(select(Call).where(col(Call.id) > after_id).order_by(col(Call.id))))
        for row in rows:
            session.expunge(row)
        return rows


def _last_id(runtime: EvaRuntime) -> int:
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        row = session.exec(select(Call).order_by(col(Call.id).desc())).first()
        return int(row.id or 0) if row is not None else 0


async def _calls(caller: Caller, count: int, at_once: int = 4) -> list[object]:
    results: list[object] = []
    for start in range(0, count, at_once):
        batch = [place_call_async(caller.script("100", Action("hangup", when_quiet=1.0), timeout=15, record=False))
                 for _ in range(min(at_once, count - start))]
        results += await asyncio.gather(*batch)
    return results


async def test_calls_are_spread_over_both_workers_and_each_is_answered_once(pair: Pair, caller: Caller) -> None:
    before = _last_id(pair.runtime)
    results = await _calls(caller, 12)
    assert all(getattr(r, "connected", False) for r in results), results
    rows = _rows_since(pair.runtime, before)
    assert len(rows) == 12, [(r.id, r.worker, r.channel_id) for r in rows]  # one row per call: nobody twice
    assert len({r.channel_id for r in rows}) == 12
    assert all(r.answered_at is not None and r.ended_at is not None for r in rows), rows
    by_worker = Counter(r.worker for r in rows)
    # Each call starts at a random worker: both get some (all 12 on one has a chance of 1 in 2,048).
    assert set(by_worker) == {pair.main.worker, pair.second.worker}, by_worker


async def test_a_dead_workers_call_is_closed_by_the_other_which_takes_every_new_call(
        pair: Pair, caller: Caller) -> None:
    pair.apps(SECOND_APP)  # the next call goes to the second worker
    call = asyncio.ensure_future(place_call_async(caller.script("100", timeout=40, record=False)))
    call_id = await pair.workers.live_call(pair.second)
    pair.apps(pair.main.ari.app, SECOND_APP)
    # The second worker dies: its websocket closes and its heartbeat stops; nothing is hung up.
    pair.workers.proxy.cut()
    await pair.second.peers.close()
    result = await call
    # The main worker noticed the missing worker and hung its caller up, well before the caller's 40 s.
    assert result.connected and result.remote_hangup, result
    assert result.duration < 20, result.duration
    rows = {r.id: r for r in _rows_since(pair.runtime, call_id - 1)}
    lost = rows[call_id]
    assert lost.ended_at is not None and lost.outcome == "failed" and lost.hangup_cause == "worker_lost", lost
    assert pair.main.peers.closed_calls >= 1
    # Every new call reaches the live worker, also those offered to the dead one first (Stasis() fails at once
    # for an application nobody is connected to, and eva-stasis tries the next): offered the dead one three times
    # out of four, a call starts at it with odds of 3 in 4, and all four calls skip it with odds of 1 in 256.
    pair.apps(SECOND_APP, SECOND_APP, SECOND_APP, pair.main.ari.app)
    before = _last_id(pair.runtime)
    results = await _calls(caller, 4)
    assert all(getattr(r, "connected", False) for r in results), results
    rows_after = _rows_since(pair.runtime, before)
    assert [r.worker for r in rows_after] == [pair.main.worker] * 4, rows_after
    assert all(r.answered_at is not None for r in rows_after)
