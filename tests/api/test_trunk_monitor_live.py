"""Trunk monitoring against the real Asterisk 22: one trunk to a live pjsua2 endpoint (it answers Asterisk's
OPTIONS pings) and one to a closed port.  The first is up, the second down; a call on the first is counted now and
today; when the endpoint goes away the first goes down, and the history shows each change.

Qualify runs every second here (``trunk_qualify_s=1``) and the full re-read only every 30 s, so the changes after
the first read come from Asterisk's AMI events, as they do in production."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from admin_api.framework import SERVICES_KEY
from models.db import make_engine, upgrade
from tests.api.conftest import Api, delete_trunks, start_api
from voicebot.asterisk.process import Asterisk
from voicebot.config import Settings
from voicebot.harness import free_udp_port, start_callee
from voicebot.sipcaller import Action, CallScript

UP_IP = "127.0.0.24"
"""The live endpoint's own loopback address: the trunk's identify rule must not claim other tests' callers."""
DOWN_IP = "127.0.0.25"


@pytest.fixture
async def monitored_api(asterisk: Asterisk, eva_settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    settings = eva_settings.with_(database_url=f"sqlite:///{tmp_path / 'monitor.db'}", trunk_qualify_s=1,
                                  trunk_resync_s=30.0)
    engine: Engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    api = await start_api(settings, engine)
    try:
        yield api
    finally:
        await delete_trunks(api)
        await api.client.close()
        engine.dispose()






async def _until(api: Api, trunk_id: int, check: Callable[[dict[str, Any]], bool], what: str,
                 seconds: float = 15.0) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for _ in range(int(seconds / 0.1)):
        status, state = await api.call("GET", f"/api/v1/sip/trunks/{trunk_id}/status", role="viewer")
        assert status == 200, state
        if check(state):
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {state}")


async def test_a_live_trunk_is_up_a_dead_one_down_and_the_history_shows_the_change(monitored_api: Api) -> None:
    api = monitored_api
    services = api.app[SERVICES_KEY]
    assert services.trunk_monitor is not None and services.ami is not None
    seen: list[dict[str, str]] = []
    services.trunk_monitor._ami.on_event("ContactStatus", lambda _m, event: seen.append(dict(event)))

    port = free_udp_port(UP_IP)
    # The endpoint answers OPTIONS while it runs; it takes one call, hangs it up after 2 s, and exits.
    callee = await start_callee(CallScript(
        uri="", answer=True, bind_ip=UP_IP, bind_port=port, timeout=20, record_path="",
        actions=(Action("hangup", at=2.0),)))
    try:
        status, live = await api.call("POST", "/api/v1/sip/trunks", json={"name": "mon-up", "host": UP_IP,
                                                                         "port": port})
        assert status == 201, live
        status, dead = await api.call("POST", "/api/v1/sip/trunks", json={"name": "mon-down", "host": DOWN_IP,
                                                                         "port": free_udp_port(DOWN_IP)})
        assert status == 201, dead
        up = await _until(api, live["id"], lambda s: s["state"] == "up", "the live trunk up")
        assert up["monitored"] is True and "answers SIP OPTIONS" in up["state_detail"], up
        down = await _until(api, dead["id"], lambda s: s["state"] == "down", "the dead trunk down")
        assert "OPTIONS" in down["state_detail"] and down["since"] is not None, down
        assert (down["active_calls"], down["calls_today"]) == (0, 0)

        # A call on the live trunk: counted while it is up, and in today's calls after it ended.
        answer = await services.ami.action({
            "Action": "Originate", "Channel": "PJSIP/100@trunk-mon-up", "Application": "Wait", "Data": "10",
            "Async": "true", "Timeout": "10000"}, as_list=False)
        assert answer[0].success, answer[0]
        await _until(api, live["id"], lambda s: s["active_calls"] == 1, "the call counted as active")
        ended = await _until(api, live["id"], lambda s: s["active_calls"] == 0, "the call ended")
        assert ended["calls_today"] == 1 and ended["calls_counted_since"] is not None, ended
        result = await callee
        assert result.connected, result

        # The endpoint is gone: no answer to the next OPTIONS, so the trunk goes down (an event, not a re-read).
        gone = await _until(api, live["id"], lambda s: s["state"] == "down", "the live trunk down")
        assert gone["state_detail"].startswith("no answer to SIP OPTIONS"), gone
    finally:
        if not callee.done():
            callee.cancel()

    status, page = await api.call("GET", f"/api/v1/sip/trunks/{live['id']}/history", role="viewer")
    assert status == 200, page
    changes = [(item["previous"], item["state"]) for item in reversed(page["items"])]
    assert ("up", "down") in changes and changes[-1] == ("up", "down"), changes
    assert any(state == "up" for _previous, state in changes), changes
    assert gone["recent_changes"][0]["state"] == "down"
    status, dead_page = await api.call("GET", f"/api/v1/sip/trunks/{dead['id']}/history", role="viewer")
    assert dead_page["items"][0]["state"] == "down", dead_page
    # Asterisk's own events carried the changes (field names as the tracker reads them).
    assert any(e.get("AOR") == "trunk-mon-up" and e.get("ContactStatus") == "Unreachable" for e in seen), seen

    status, metrics_text = await api.call("GET", "/metrics", role=None)
    assert status == 200
    assert 'eva_trunk_up{trunk="mon-up"} 0' in metrics_text and 'eva_trunk_up{trunk="mon-down"} 0' in metrics_text
