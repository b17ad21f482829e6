"""The trunk monitor's loop and the trunk status/history routes, without Asterisk.

The monitor is driven by a scripted AMI (its ``action`` answers with Asterisk 22's messages, ``emit`` delivers an
event as panoramisk would): it proves the wiring (events → history rows, log line, gauge), the healing re-read,
the reaction to a dropped connection, restarts without duplicate rows and an idempotent close.  The real-Asterisk
test is tests/api/test_trunk_monitor_live.py."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from admin_api import trunk_monitor
from admin_api.ami import AmiClient
from admin_api.trunk_monitor import TrunkMonitor
from models import SipTrunk, TrunkStateEvent, utcnow
from models.db import session_scope
from tests.api.conftest import Api, offline_settings
from voicebot import metrics
from voicebot.errors import AmiError


class ScriptedAmi:
    """What the monitor uses of :class:`AmiClient`, answering from ``contacts`` / ``channels``."""

    def __init__(self) -> None:
        self.listeners: list[tuple[str, Callable[[Any, Mapping[str, Any]], None]]] = []
        self.connected = True
        self.down = False
        self.contacts: dict[str, str] = {}
        """endpoint → ContactStatusDetail Status"""
        self.channels: list[dict[str, str]] = []
        self.actions: list[str] = []
        self.closed = 0

    def on_event(self, pattern: str, callback: Callable[[Any, Mapping[str, Any]], None]) -> None:
        self.listeners.append((pattern, callback))

    def emit(self, event: dict[str, str]) -> None:
        for pattern, callback in self.listeners:
            if fnmatch.fnmatch(event["Event"], pattern):
                callback(None, event)

    async def action(self, fields: Mapping[str, Any], **_kwargs: Any) -> list[dict[str, str]]:
        self.actions.append(str(fields["Action"]))
        if self.down:
            raise AmiError("Asterisk AMI at 127.0.0.1:5038 is not reachable")
        if fields["Action"] == "PJSIPShowEndpoint":
            name = str(fields["Endpoint"])
            if name not in self.contacts:
                return [{"Response": "Error", "Message": "Unable to retrieve endpoint " + name}]
            return [{"Response": "Success", "EventList": "start"},
                    {"Event": "EndpointDetail", "ObjectName": name, "DeviceState": "Not in use"},
                    {"Event": "ContactStatusDetail", "AOR": name, "URI": "sip:127.0.0.9:5060",
                     "Status": self.contacts[name], "RoundtripUsec": "1500", "EndpointName": name},
                    {"Event": "EndpointDetailComplete", "EventList": "Complete"}]
        if fields["Action"] == "CoreShowChannels":
            return [{"Response": "Success", "EventList": "start"}, *self.channels,
                    {"Event": "CoreShowChannelsComplete", "EventList": "Complete"}]
        return [{"Response": "Success"}]

    async def close(self) -> None:
        self.closed += 1


async def until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def history(engine: Engine, trunk_id: int) -> list[tuple[str, str]]:
    with session_scope(engine) as session:
        rows = session.exec(select(TrunkStateEvent).where(col(TrunkStateEvent.trunk_id) == trunk_id)
                            .order_by(col(TrunkStateEvent.id))).all()
        return [(r.previous, r.state) for r in rows]


def add_trunk(engine: Engine, name: str) -> int:
    with session_scope(engine) as session:
        trunk = SipTrunk(name=name, host="127.0.0.9")
        session.add(trunk)
        session.flush()
        assert trunk.id is not None
        return trunk.id


async def test_events_resyncs_and_a_dropped_connection_make_the_history(
        sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="admin_api.trunk_monitor")
    monkeypatch.setattr(trunk_monitor, "RETRY_S", 0.2)
    trunk_id = add_trunk(sqlite_engine, "mon-acme")
    ami = ScriptedAmi()
    ami.contacts["trunk-mon-acme"] = "Reachable"
    ami.channels = [{"Event": "CoreShowChannel", "Channel": "PJSIP/trunk-mon-acme-00000001", "Uniqueid": "7.1"}]
    settings = offline_settings(tmp_path / "data", trunk_resync_s=30.0)
    monitor = TrunkMonitor(settings, sqlite_engine, ami=cast(AmiClient, ami))
    await monitor.start()
    try:
        await until(lambda: history(sqlite_engine, trunk_id) == [("", "up")], "the first state")
        snap = monitor.snapshot(trunk_id)
        assert snap is not None and (snap.state, snap.active_calls, snap.calls_today) == ("up", 1, 1)
        assert metrics.TRUNK_UP.value(trunk="mon-acme") == 1

        # An event: down at once, without waiting for the next re-read (30 s away).
        ami.emit({"Event": "ContactStatus", "URI": "sip:127.0.0.9:5060", "ContactStatus": "Unreachable",
                  "AOR": "trunk-mon-acme", "EndpointName": "trunk-mon-acme", "RoundtripUsec": "0"})
        assert monitor.snapshot(trunk_id).state == "down"  # type: ignore[union-attr]
        await until(lambda: history(sqlite_engine, trunk_id)[-1:] == [("up", "down")], "the down row")
        assert metrics.TRUNK_UP.value(trunk="mon-acme") == 0
        assert f"trunk mon-acme (id {trunk_id}) is down (was up): no answer to SIP OPTIONS" in caplog.text

        # A contact re-created by a reload: only a listing can tell, and the monitor reads one at once.
        ami.contacts["trunk-mon-acme"] = "Reachable"
        ami.emit({"Event": "ContactStatus", "ContactStatus": "Created", "AOR": "trunk-mon-acme"})
        await until(lambda: history(sqlite_engine, trunk_id)[-1:] == [("down", "up")], "the healing re-read")

        # The connection drops and Asterisk does not answer: unknown; it comes back: up again.
        ami.down, ami.connected = True, False
        await until(lambda: history(sqlite_engine, trunk_id)[-1:] == [("up", "unknown")], "unknown")
        assert monitor.reachable is False and monitor.snapshot(trunk_id).active_calls == 0  # type: ignore[union-attr]
        ami.down, ami.connected = False, True
        await until(lambda: history(sqlite_engine, trunk_id)[-1:] == [("unknown", "up")], "up again")
        assert [r.getMessage() for r in caplog.records if "(AMI)" in r.getMessage()]
        assert "+1555" not in caplog.text  # no caller data in the log
    finally:
        await monitor.close()
        await monitor.close()  # idempotent
    assert ami.closed == 0  # the caller's AMI client is the caller's to close

    # Eva restarts: the same state read again adds no row.
    rows = history(sqlite_engine, trunk_id)
    metrics.TRUNK_UP.set(0, trunk="mon-acme")  # a new process starts without the series
    again = TrunkMonitor(settings, sqlite_engine, ami=cast(AmiClient, ami))
    await again.start()
    try:
        await until(lambda: again.resyncs >= 1, "the first read after a restart")
        snap = again.snapshot(trunk_id)
        assert snap is not None and snap.state == "up" and snap.since is not None
        assert snap.since < utcnow() - timedelta(milliseconds=1)  # since the recorded change, not since now
        assert metrics.TRUNK_UP.value(trunk="mon-acme") == 1  # shown although nothing changed
    finally:
        await again.close()
    assert history(sqlite_engine, trunk_id) == rows


async def test_without_trunks_asterisk_is_not_asked_and_the_loop_rests(sqlite_engine: Engine,
                                                                        tmp_path: Path) -> None:
    ami = ScriptedAmi()
    ami.connected = False  # never connected: nothing to listen to, which must not make the loop spin
    monitor = TrunkMonitor(offline_settings(tmp_path / "data", trunk_resync_s=30.0), sqlite_engine,
                           ami=cast(AmiClient, ami))
    await monitor.start()
    try:
        await until(lambda: monitor.resyncs >= 1, "the first read")
        await asyncio.sleep(0.5)
        assert (monitor.resyncs, ami.actions, monitor.reachable) == (1, [], None)
    finally:
        await monitor.close()


async def test_a_deleted_trunk_leaves_no_series_and_late_changes_are_not_written(
        sqlite_engine: Engine, tmp_path: Path) -> None:
    trunk_id = add_trunk(sqlite_engine, "mon-gone")
    ami = ScriptedAmi()
    ami.contacts["trunk-mon-gone"] = "Reachable"
    monitor = TrunkMonitor(offline_settings(tmp_path / "data"), sqlite_engine, ami=cast(AmiClient, ami))
    await monitor.start()
    try:
        await until(lambda: metrics.TRUNK_UP.value(trunk="mon-gone") == 1, "the gauge")
        with session_scope(sqlite_engine) as session:
            row = session.get(SipTrunk, trunk_id)
            assert row is not None
            session.delete(row)
        monitor.kick()
        await until(lambda: monitor.snapshot(trunk_id) is None, "the trunk dropped")
        assert 'trunk="mon-gone"' not in metrics.REGISTRY.render().split("eva_trunk_up", 1)[1].split("# HELP")[0]
        # A change queued for a trunk deleted meanwhile is skipped by the writer, not an error.
        assert trunk_monitor.record_changes(sqlite_engine, [trunk_monitor.StateChange(
            trunk_id=trunk_id, trunk_name="mon-gone", state="down", previous="up", detail="", at=utcnow())]) == 0
    finally:
        await monitor.close()


async def test_status_and_history_routes_without_asterisk(api: Api) -> None:
    status, trunk = await api.call("POST", "/api/v1/sip/trunks", json={"name": "hist", "host": "127.0.0.9"})
    assert status == 201, trunk
    status, state = await api.call("GET", f"/api/v1/sip/trunks/{trunk['id']}/status", role="viewer")
    assert status == 200, state
    assert (state["asterisk"], state["monitored"], state["state"], state["since"]) == ("offline", False, "unknown",
                                                                                        None)
    assert (state["active_calls"], state["calls_today"], state["recent_changes"]) == (0, 0, [])

    start = utcnow()
    sequence = ["unknown", "up", "down", "up"] * 4
    with session_scope(api.engine) as session:
        for index, name in enumerate(sequence):
            session.add(TrunkStateEvent(trunk_id=trunk["id"], trunk_name="hist", state=name,
                                        previous=sequence[index - 1] if index else "", detail=f"change {index}",
                                        at=start + timedelta(seconds=index)))
    status, page = await api.call("GET", f"/api/v1/sip/trunks/{trunk['id']}/history?limit=5&offset=0",
                                  role="viewer")
    assert status == 200, page
    assert (page["total"], page["limit"], len(page["items"])) == (16, 5, 5)
    assert [i["detail"] for i in page["items"]] == [f"change {i}" for i in (15, 14, 13, 12, 11)]  # newest first
    status, last = await api.call("GET", f"/api/v1/sip/trunks/{trunk['id']}/history?limit=5&offset=15",
                                  role="viewer")
    assert [i["detail"] for i in last["items"]] == ["change 0"] and last["items"][0]["previous"] == ""
    status, state = await api.call("GET", f"/api/v1/sip/trunks/{trunk['id']}/status", role="viewer")
    assert len(state["recent_changes"]) == trunk_monitor.RECENT_CHANGES
    assert state["recent_changes"][0]["detail"] == "change 15"
    assert (state["state"], state["since"]) == ("unknown", None)  # not monitored: the history is no current state
    assert (await api.call("GET", "/api/v1/sip/trunks/9999/history"))[0] == 404
    assert (await api.call("GET", f"/api/v1/sip/trunks/{trunk['id']}/history?limit=0"))[0] == 422

    # Deleting the trunk deletes its history (a later trunk may get the same id on SQLite).
    assert (await api.call("DELETE", f"/api/v1/sip/trunks/{trunk['id']}"))[0] == 204
    assert history(api.engine, trunk["id"]) == []
