"""``reap``: waiting for a cancelled child task must not swallow a cancellation of the waiting task itself
(that left a call's task running on, stuck in "cancelling", and every later call test failed behind it)."""

from __future__ import annotations

import asyncio

import pytest

from voicebot.pipeline.session import reap


async def test_a_cancellation_of_the_waiter_propagates() -> None:
    release = asyncio.Event()

    async def child() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # a child that takes its time to finish after cancel()
            raise

    inner = asyncio.create_task(child(), name="child")
    await asyncio.sleep(0)
    inner.cancel()

    async def waiter() -> str:
        await reap(inner)
        return "went on"  # what the old suppress(CancelledError) pattern let happen

    outer = asyncio.create_task(waiter(), name="waiter")
    await asyncio.sleep(0.01)
    outer.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner.cancelled()


async def test_reaping_a_finished_or_failed_task_returns() -> None:
    async def fails() -> None:
        raise RuntimeError("logged where it ran")

    task = asyncio.create_task(fails(), name="fails")
    await reap(task)
    assert task.done() and not task.cancelled()
