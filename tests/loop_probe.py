"""One probe for "nothing blocks the event loop": a ticker on the running loop, where a blocked loop shows up as a
long gap between two ticks.  Shared by every test that runs untrusted work beside the loop (mail, documents,
dialplans) — timings are read by each test with its own generous bound."""

from __future__ import annotations

import asyncio
import os
import time
from types import TracebackType


def stall_bound(alone: float = 0.1) -> float:
    """The longest loop (or media clock) stall a test accepts, in seconds: ``alone`` when this process has the
    cores to itself, 250 ms when parallel test workers share them -- the scheduler alone has delayed a wake-up by
    109 ms there (3 workers on 2 cores).  Either is far below what untrusted work on the loop costs (seconds)."""
    return max(alone, 0.25) if os.environ.get("PYTEST_XDIST_WORKER") else alone


class LoopProbe:
    """``async with LoopProbe() as probe: ...`` then ``probe.longest_delay``: the longest a tick came late."""

    def __init__(self, period: float = 0.02) -> None:
        self.period = period
        self.intervals: list[float] = []
        """Time between consecutive ticks (each at least ``period``)."""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def longest_interval(self) -> float:
        return max(self.intervals, default=0.0)

    @property
    def longest_delay(self) -> float:
        """How much later than ``period`` the worst tick came."""
        return max(self.longest_interval - self.period, 0.0)

    async def _tick(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            await asyncio.sleep(self.period)
            now = time.perf_counter()
            self.intervals.append(now - last)
            last = now

    async def __aenter__(self) -> LoopProbe:
        self._task = asyncio.create_task(self._tick(), name="test-loop-probe")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
