"""The admin API against the real Asterisk 22 of the test session: SIP trunks rendered, reloaded through AMI,
checked and rolled back; dialplans validated and applied; live calls listed and hung up; outbound calls.

Everything a test changes in the shared Asterisk (trunks, dialplan overrides) is removed again at its end, so
other suites see the configuration the session started with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from admin_api.trunks import TRUNKS_FILE
from models import Call
from models.db import make_engine, session_scope, upgrade
from tests.api.conftest import Api, start_api
from tests.conftest import Caller
from voicebot.asterisk.process import Asterisk
from voicebot.config import Settings
from voicebot.sipcaller import CallResult

SECRET = "Tr0ub4dor;&3-very-secret"
"""Contains ';', which starts a comment in Asterisk config unless escaped."""


@pytest.fixture
async def live_api(asterisk: Asterisk, eva_settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    settings = eva_settings.with_(database_url=f"sqlite:///{tmp_path / 'live.db'}")
    engine: Engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    api = await start_api(settings, engine)  # live: AMI from the settings, call control through AMI
    try:
        yield api
    finally:
        _, trunks = await api.call("GET", "/api/v1/sip/trunks")
        for trunk in trunks:
            await api.call("DELETE", f"/api/v1/sip/trunks/{trunk['id']}")
        _, dialplans = await api.call("GET", "/api/v1/dialplans")
        for dialplan in dialplans:
            if dialplan["source"] != "packaged":
                await api.call("DELETE", f"/api/v1/dialplans/{dialplan['name']}")
        await api.client.close()
        engine.dispose()


def _exists(path: str) -> bool:
    return Path(path).exists()


async def cli(asterisk: Asterisk, command: str) -> str:
    """Asterisk's own CLI (not AMI): an independent view of what is loaded."""
    return await asyncio.to_thread(asterisk.cli, command)


async def test_trunk_crud_render_reload_status_and_rollback(live_api: Api, asterisk: Asterisk,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api = live_api
    seen: list[str] = []

    async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = await api.client.request(method, path, headers=api.auth("admin"), **kwargs)
        seen.append(await response.text())
        return response.status, (await response.json() if response.content_type == "application/json" else None)

    status, trunk = await call("POST", "/api/v1/sip/trunks", json={
        "name": "acme", "host": "127.0.0.2", "port": 5080, "username": "eva-account", "password": SECRET,
        "registration": True, "codecs": ["ulaw", "alaw"], "dids": ["+15550100"]})
    assert status == 201, trunk
    assert trunk["has_password"] is True and "password" not in trunk and trunk["endpoint"] == "trunk-acme"
    shown = await cli(asterisk, "pjsip show endpoint trunk-acme")
    assert "trunk-acme" in shown and "127.0.0.2" in shown
    auth = await cli(asterisk, "pjsip show auth trunk-acme")
    assert SECRET in auth  # the ';' survived the config file: Asterisk holds exactly the password we were given

    status, state = await call("GET", f"/api/v1/sip/trunks/{trunk['id']}/status")
    assert status == 200 and state["asterisk"] == "live" and state["endpoint_found"] is True
    assert state["endpoint_state"] and state["endpoint_state"] != "unknown"
    assert state["registration"] not in (None, "missing")
    assert state["contacts"] and state["contacts"][0]["uri"] == "sip:127.0.0.2:5080"

    status, changed = await call("PATCH", f"/api/v1/sip/trunks/{trunk['id']}", json={"host": "127.0.0.3"})
    assert (status, changed["host"], changed["has_password"]) == (200, "127.0.0.3", True)
    assert "127.0.0.3" in await cli(asterisk, "pjsip show endpoint trunk-acme")

    # A host Asterisk cannot resolve: it refuses the identify; the change is rolled back and reported.
    status, error = await call("PATCH", f"/api/v1/sip/trunks/{trunk['id']}",
                               json={"host": "sip.no-such-provider.invalid"})
    assert (status, error["error"]["code"], error["error"]["field"]) == (422, "asterisk_rejected", "host")
    assert "identify" in error["error"]["message"]
    assert "127.0.0.3" in await cli(asterisk, "pjsip show endpoint trunk-acme")
    assert (await call("GET", f"/api/v1/sip/trunks/{trunk['id']}"))[1]["host"] == "127.0.0.3"
    rendered = (api.settings.asterisk_dir / "etc" / TRUNKS_FILE).read_text()
    assert "127.0.0.3" in rendered and ".invalid" not in rendered

    status, error = await call("POST", "/api/v1/sip/trunks", json={"name": "ghost", "host": "ghost.invalid"})
    assert (status, error["error"]["code"]) == (422, "asterisk_rejected")
    assert [t["name"] for t in (await call("GET", "/api/v1/sip/trunks"))[1]] == ["acme"]
    assert "trunk-ghost" not in await cli(asterisk, "pjsip show endpoints")
    status, error = await call("POST", "/api/v1/sip/trunks", json={"name": "acme", "host": "127.0.0.4"})
    assert status == 409

    # TCP trunks get a TCP transport; disabling a trunk takes it out of Asterisk, deleting removes it.
    status, tcp = await call("POST", "/api/v1/sip/trunks", json={"name": "tcpco", "host": "127.0.0.5",
                                                                 "transport": "tcp"})
    assert status == 201, tcp
    assert "trunk-transport-tcp" in await cli(asterisk, "pjsip show endpoint trunk-tcpco")
    assert (await call("DELETE", f"/api/v1/sip/trunks/{tcp['id']}"))[0] == 204
    status, off = await call("PATCH", f"/api/v1/sip/trunks/{trunk['id']}", json={"enabled": False})
    assert (status, off["enabled"]) == (200, False)
    assert "trunk-acme" not in await cli(asterisk, "pjsip show endpoints")
    status, state = await call("GET", f"/api/v1/sip/trunks/{trunk['id']}/status")
    assert (status, state["endpoint_found"]) == (200, False)
    assert (await call("PATCH", f"/api/v1/sip/trunks/{trunk['id']}", json={"enabled": True}))[0] == 200
    assert "trunk-acme" in await cli(asterisk, "pjsip show endpoints")
    assert (await call("DELETE", f"/api/v1/sip/trunks/{trunk['id']}"))[0] == 204
    assert "trunk-acme" not in await cli(asterisk, "pjsip show endpoints")
    assert "trunk-acme" not in (api.settings.asterisk_dir / "etc" / TRUNKS_FILE).read_text()

    # The password never left the API: not in a response, not in a log line.
    assert len(seen) >= 14
    assert not [text for text in seen if SECRET in text]
    assert SECRET not in caplog.text
    assert "Tr0ub4dor" not in caplog.text


GOOD_INBOUND_EXTRA = """
; test extension: answers and waits, so only a hangup from the API ends the call early
exten => 4299,1,Answer()
 same => n,Wait(20)
 same => n,Hangup()
"""


async def test_dialplans_validated_applied_and_rolled_back(live_api: Api, asterisk: Asterisk) -> None:
    api = live_api
    status, listed = await api.call("GET", "/api/v1/dialplans", role="viewer")
    assert status == 200 and {"name": "inbound", "source": "packaged"}.items() <= listed[0].items()
    status, custom = await api.call("PUT", "/api/v1/dialplans/api-test", role="designer", json={
        "content": "[api-test-ctx]\nexten => 7001,1,Answer()\n same => n,Playback(${EVA_SOUNDS}/eva-selftest)\n"
                   " same => n,Hangup()\n"})
    assert (status, custom["applied"], custom["source"], custom["contexts"]) == (200, True, "custom",
                                                                                ["api-test-ctx"])
    assert "7001" in await cli(asterisk, "dialplan show api-test-ctx")

    refused = {
        "[api-test-ctx]\nexten => 7001,1,NoSuchApplication()\n": (422, "invalid_input", "line 2"),
        "[api-test-ctx]\nexten => 7001,1,Answer(\n": (422, "invalid_input", "line 2"),
        "[api-test-ctx]\n#exec /bin/sh -c 'touch /tmp/pwned'\n": (422, "invalid_input", "#exec"),
        # Loaded in Asterisk, but able to run shell commands or write anywhere: not for IVR designers.
        "[api-test-ctx]\nexten => 7001,1,MixMonitor(/tmp/x.wav,,touch /tmp/pwned)\n": (422, "invalid_input",
                                                                                      "not allowed"),
        "[api-test-ctx]\nexten => 7001,1,Exec(MixMonitor(/tmp/x.wav,,touch /tmp/pwned))\n": (422, "invalid_input",
                                                                                            "not allowed"),
        "[api-test-ctx]\nfoo bar\n": (422, "invalid_input", "line 2"),
        "[eva-inbound]\nexten => 1,1,Answer()\n": (409, "conflict", "eva-inbound"),
        "[api-test-ctx]\nexten => 1,1,Answer()\ninclude => no-such-context\n": (422, "invalid_input", "line 3"),
        # Statically fine, but Asterisk keeps only the first of two identical priorities: caught after the
        # reload by comparing Asterisk's view line by line, then rolled back.
        "[api-test-ctx]\nexten => 7002,1,Answer()\nexten => 7002,1,Hangup()\n": (
            422, "asterisk_rejected", "line 3 was not loaded: Unable to register extension '7002' priority 1 in "
                                      "'api-test-ctx', already in use"),
    }
    for content, (status_code, code, words) in refused.items():
        status, error = await api.call("PUT", "/api/v1/dialplans/api-test", role="designer",
                                       json={"content": content})
        assert (status, error["error"]["code"]) == (status_code, code), (content, error)
        assert words in error["error"]["message"], error
        # The working version is still the one Asterisk runs, and the one stored.
        shown = await cli(asterisk, "dialplan show api-test-ctx")
        assert "7001" in shown and "7002" not in shown
    assert (await api.call("GET", "/api/v1/dialplans/api-test", role="viewer"))[1]["content"] == custom["content"]
    assert not _exists("/tmp/pwned")

    assert (await api.call("DELETE", "/api/v1/dialplans/api-test", role="designer"))[0] == 204
    assert "api-test-ctx" not in await cli(asterisk, "dialplan show")
    assert (await api.call("GET", "/api/v1/dialplans/api-test", role="viewer"))[0] == 404
    assert (await api.call("DELETE", "/api/v1/dialplans/inbound", role="designer"))[0] == 409


async def test_live_call_listed_and_hung_up_through_the_api(live_api: Api, asterisk: Asterisk,
                                                           caller: Caller) -> None:
    api = live_api
    _, inbound = await api.call("GET", "/api/v1/dialplans/inbound", role="viewer")
    status, edited = await api.call("PUT", "/api/v1/dialplans/inbound", role="designer",
                                    json={"content": inbound["content"] + GOOD_INBOUND_EXTRA})
    assert (status, edited["source"], edited["applied"]) == (200, "override", True)
    try:
        placing = asyncio.create_task(asyncio.to_thread(caller.call, "4299", timeout=30.0, record=False))
        live: dict[str, Any] | None = None
        for _ in range(100):
            status, calls = await api.call("GET", "/api/v1/calls/live", role="viewer")
            assert status == 200
            live = next((c for c in calls if c["did"] == "4299" and c["state"] == "Up"), None)
            if live is not None:
                break
            await asyncio.sleep(0.1)
        assert live is not None, "the call never showed up as live"
        assert live["call_id"] is None  # no voice loop wrote a row for this dialplan-only call
        with session_scope(api.engine) as session:
            row = Call(channel_id=live["channel_id"], caller="test", did="4299")
            session.add(row)
            session.flush()
            call_id = row.id
        assert (await api.call("GET", "/api/v1/calls/live", role="viewer"))[1][0]["call_id"] == call_id
        status, _ = await api.call("POST", f"/api/v1/calls/{call_id}/hangup", role="admin")
        assert status == 204
        result: CallResult = await placing
        assert result.connected and result.remote_hangup
        assert result.duration < 15  # Wait(20) would have held it: the API ended it
        status, error = await api.call("POST", f"/api/v1/calls/{call_id}/hangup", role="admin")
        assert (status, error["error"]["code"]) == (409, "conflict")
    finally:
        assert (await api.call("DELETE", "/api/v1/dialplans/inbound", role="designer"))[0] == 204
    shown = await cli(asterisk, "dialplan show eva-inbound")
    assert "4299" not in shown and "'600'" in shown


async def test_outgoing_call_is_originated(live_api: Api) -> None:
    api = live_api
    _, agent = await api.call("POST", "/api/v1/agents", json={"name": "caller-bot"})
    status, error = await api.call("POST", "/api/v1/calls/outgoing", json={"agent_id": 999, "number": "5555"})
    assert (status, error["error"]["field"]) == (422, "agent_id")
    status, error = await api.call("POST", "/api/v1/calls/outgoing", json={"agent_id": agent["id"],
                                                                           "number": "55;55"})
    assert (status, error["error"]["field"]) == (422, "number")
    status, placed = await api.call("POST", "/api/v1/calls/outgoing", json={
        "agent_id": agent["id"], "number": "5555", "timeout_s": 10})
    assert (status, placed["status"]) == (202, "originating")
    channel = None
    for _ in range(50):
        _, calls = await api.call("GET", "/api/v1/calls/live", role="viewer")
        channel = next((c for c in calls if c["channel_id"] == placed["channel_id"]), None)
        if channel is not None:
            break
        await asyncio.sleep(0.1)
    assert channel is not None and channel["channel"].startswith("PJSIP/carrier-")
    with session_scope(api.engine) as session:
        row = Call(channel_id=placed["channel_id"], direction="outbound", did="5555", agent_id=agent["id"])
        session.add(row)
        session.flush()
        call_id = row.id
    assert (await api.call("POST", f"/api/v1/calls/{call_id}/hangup"))[0] == 204


async def test_health_reports_every_dependency(live_api: Api) -> None:
    status, health = await live_api.call("GET", "/api/v1/health", role=None)
    assert status == 200
    checks = {c["name"]: c for c in health["checks"]}
    assert set(checks) == {"database", "asterisk_ari", "asterisk_ami", "llm", "chroma"}
    for name in ("database", "asterisk_ari", "asterisk_ami"):
        assert checks[name]["status"] == "ok", checks[name]
        assert checks[name]["latency_ms"] is not None and checks[name]["latency_ms"] >= 0
    assert checks["llm"]["status"] == checks["chroma"]["status"] == "unconfigured"
    assert health["status"] == "ok"
