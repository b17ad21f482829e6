"""Asterisk restarts must not need an Eva restart: the ARI events connection comes back by itself."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Caller
from voicebot.asterisk.process import Asterisk
from voicebot.server import EvaRuntime
from voicebot.sipcaller import place_call_async

pytestmark = pytest.mark.asyncio(loop_scope="session")  # asterisk/models marks: derived (tests/conftest.py)


async def test_eva_reconnects_after_asterisk_restarts(runtime: EvaRuntime, asterisk: Asterisk,
                                                      caller: Caller) -> None:
    assert runtime.voice is not None
    ari = runtime.voice.ari
    assert ari.connected
    before = ari.reconnects
    await asyncio.to_thread(asterisk.stop)
    for _ in range(50):
        if not ari.connected:
            break
        await asyncio.sleep(0.1)
    assert not ari.connected
    await asyncio.to_thread(asterisk.start)
    await ari.wait_connected(timeout=15)
    assert ari.reconnects > before
    result = await place_call_async(caller.script("100", timeout=4, record=False))
    assert result.connected, result  # answered by Eva: the call reached Stasis(eva)
