"""``OrderedWorker`` (voicebot.media.priority): one model thread, lowest key first, FIFO among equal keys; the
order Piper synthesizes in (earliest playout deadline first) and the embedder's lanes."""

from __future__ import annotations

import asyncio
import threading

import pytest

from voicebot.media.priority import OrderedWorker


async def test_jobs_queued_behind_a_running_one_run_lowest_key_first_and_in_order_among_equals() -> None:
    worker = OrderedWorker("test-ordered")
    gate, ran = threading.Event(), list[str]()
    try:
        busy = worker.submit(0.0, gate.wait, 5)
        await asyncio.sleep(0.05)  # the worker is now inside the first job
        jobs = [asyncio.wrap_future(worker.submit(key, ran.append, name)) for key, name in
                [(5.0, "later sentence"), (1.0, "first sentence A"), (5.0, "later sentence 2"),
                 (1.0, "first sentence B")]]
        gate.set()
        await asyncio.gather(asyncio.wrap_future(busy), *jobs)
    finally:
        worker.close()
    assert ran == ["first sentence A", "first sentence B", "later sentence", "later sentence 2"]


async def test_a_failing_job_reaches_its_caller_and_the_worker_goes_on() -> None:
    worker = OrderedWorker("test-ordered")
    try:
        with pytest.raises(ZeroDivisionError):
            await worker.run(0.0, lambda: 1 / 0)
        assert await worker.run(0.0, lambda: 42) == 42
    finally:
        worker.close()


async def test_close_cancels_what_has_not_started_and_refuses_new_jobs() -> None:
    worker = OrderedWorker("test-ordered")
    gate, started = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait(5)

    running = worker.submit(0.0, hold)
    assert await asyncio.to_thread(started.wait, 5)  # the worker is inside the first job
    waiting = worker.submit(1.0, lambda: "never")
    worker.close()
    worker.close()  # idempotent
    gate.set()
    assert running.result(timeout=5) is True
    assert waiting.cancelled()
    with pytest.raises(RuntimeError):
        worker.submit(0.0, lambda: None)
    worker._thread.join(timeout=5)
    assert not worker._thread.is_alive()


async def test_a_cancelled_caller_cancels_its_job_before_it_starts() -> None:
    worker = OrderedWorker("test-ordered")
    gate, ran = threading.Event(), list[str]()
    try:
        busy = asyncio.wrap_future(worker.submit(0.0, gate.wait, 5))
        await asyncio.sleep(0.05)
        dropped = asyncio.ensure_future(worker.run(1.0, ran.append, "dropped"))
        await asyncio.sleep(0.01)
        dropped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dropped  # the cancellation reaches the queued job (on the loop, before the worker is free)
        kept = worker.run(2.0, ran.append, "kept")
        gate.set()
        await asyncio.gather(busy, kept)
    finally:
        worker.close()
    assert ran == ["kept"]
