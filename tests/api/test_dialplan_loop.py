"""A big dialplan PUT does not stall the event loop (review L17): the loop of the admin API also runs the
voice calls' 20 ms media clock, so the 256 KiB parse and the body decoding run on threads."""

from __future__ import annotations

import time

from admin_api.dialplans import parse_dialplan
from tests.api.conftest import Api
from tests.loop_probe import LoopProbe

LINE = "exten => 1,n,Set(x=" + "(" * 1900 + ")" * 1900 + ")\n"
BIG = "[loop-big]\nexten => 1,1,NoOp()\n" + LINE * (262000 // len(LINE))
"""About 256 KiB of the most expensive text to check: every character goes through the bracket matcher."""


async def test_a_256_kib_dialplan_is_checked_off_the_event_loop(api: Api) -> None:
    assert len(BIG) <= 262144
    started = time.thread_time()
    parse_dialplan(BIG)
    parse_cpu = time.thread_time() - started  # what the check costs when it runs on the calling thread

    loop_cpu = 0.0
    async with LoopProbe(0.005) as probe:
        for _ in range(3):
            started = time.thread_time()  # CPU time of this thread, which is the event loop's
            status, saved = await api.call("PUT", "/api/v1/dialplans/loop-big", role="designer",
                                           json={"content": BIG})
            loop_cpu += time.thread_time() - started
            assert status == 200, saved
    print(f"parse {parse_cpu * 1000:.0f} ms CPU; loop CPU for 3 PUTs {loop_cpu * 1000:.0f} ms; "
          f"longest loop gap {probe.longest_interval * 1000:.0f} ms")
    # CPU accounting, not wall-clock: the loop thread spends on a whole PUT (HTTP, JSON both ways, the
    # response) well under what the check alone costs; with the check on the loop it was over 1.2 times.
    assert loop_cpu / 3 < 0.6 * parse_cpu, (loop_cpu, parse_cpu)
