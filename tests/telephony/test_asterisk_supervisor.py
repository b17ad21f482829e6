"""F15: a crashed Asterisk is noticed and restarted, calls work again; its logs are rotated and pruned.

Each test boots its own Asterisk (it gets killed), on a private port slot and data folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from admin_api.app import create_app
from models.db import make_engine, upgrade
from voicebot.asterisk.image import image_ready
from voicebot.asterisk.process import Asterisk
from voicebot.asterisk.supervisor import AsteriskSupervisor
from voicebot.harness import free_udp_port, isolated_settings
from voicebot.setup import _prompt_run
from voicebot.sipcaller import Action, CallScript, place_call_async

pytestmark = pytest.mark.asyncio  # the asterisk mark is derived (tests/conftest.py)


@pytest.fixture
async def own_asterisk(tmp_path: Path) -> AsyncIterator[Asterisk]:
    settings = isolated_settings(tmp_path / "data")
    if not image_ready(settings.asterisk_root):
        pytest.fail(f"no Asterisk image at {settings.asterisk_root}: run `make setup`")
    await asyncio.to_thread(_prompt_run, settings)
    instance = Asterisk(settings)
    await asyncio.to_thread(instance.start)
    try:
        yield instance
    finally:
        await asyncio.to_thread(instance.stop)


async def _wait(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_a_killed_asterisk_is_noticed_restarted_and_takes_calls_again(own_asterisk: Asterisk,
                                                                            tmp_path: Path) -> None:
    supervisor = AsteriskSupervisor(own_asterisk, interval=0.5)
    settings = own_asterisk.settings
    engine = make_engine(settings.effective_database_url)
    await asyncio.to_thread(upgrade, engine)
    client = TestClient(TestServer(create_app(settings, engine, offline_asterisk=True,
                                              asterisk_supervisor=supervisor), host="127.0.0.1", port=0))
    await client.start_server()
    supervisor.start()
    try:
        pid = own_asterisk.pid()
        assert pid is not None
        assert (await (await client.get("/health")).json())["asterisk"] == "running"
        seen: list[str] = []
        reported: list[str] = []

        async def health() -> None:
            while True:
                reported.append((await (await client.get("/health")).json())["asterisk"])
                checks = (await (await client.get("/api/v1/health")).json())["checks"]
                reported.extend(f"api:{c['status']}" for c in checks if c["name"] == "asterisk_process")
                await asyncio.sleep(0.05)

        def watch() -> bool:
            seen.append(supervisor.state)
            return supervisor.restarts == 1 and supervisor.state == "running"

        poller = asyncio.create_task(health())
        os.kill(pid, signal.SIGKILL)
        try:
            await _wait(watch, 60)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        assert "restarting" in seen  # it noticed (within one interval), and said so while it worked
        assert "restarting" in reported and "api:error" in reported  # the health endpoints said so too
        assert (await (await client.get("/health")).json())["asterisk"] == "running"
        new_pid = own_asterisk.pid()
        assert new_pid is not None and new_pid != pid
        assert supervisor.snapshot()["state"] == "running"
        result = await place_call_async(CallScript(
            uri=f"sip:600@{settings.bind_host}:{settings.sip_port}", actions=(Action("wait", at=2.0),),
            record_path=str(tmp_path / "after.wav"), timeout=4, bind_ip=settings.local_carrier_ip,
            bind_port=free_udp_port()))
        assert result.connected, result
    finally:
        await supervisor.close()
        await supervisor.close()  # idempotent
        await client.close()
        engine.dispose()


async def test_logs_past_the_limit_are_rotated_and_old_ones_pruned(own_asterisk: Asterisk) -> None:
    supervisor = AsteriskSupervisor(own_asterisk)
    supervisor.max_log_bytes = 4096
    supervisor.log_keep = 2
    folder = own_asterisk.settings.asterisk_dir / "log"
    with (folder / "messages.log").open("a") as handle:
        handle.write("x" * 10_000 + "\n")
    with (folder / "console.log").open("a") as handle:
        handle.write("y" * 10_000 + "\n")
    (folder / "messages.log.5").write_text("ancient")
    rotated = await asyncio.to_thread(supervisor.rotate_logs)
    assert "messages.log" in rotated and "console.log" in rotated
    assert (folder / "messages.log.0").stat().st_size > 10_000
    assert not (folder / "messages.log.5").exists()
    assert (folder / "console.log").stat().st_size < 4096  # truncated in place; Asterisk keeps writing to it
    assert 0 < (folder / "console.log.1").stat().st_size <= 4096
    # Asterisk still logs into a fresh messages.log after its own rotation.
    await asyncio.to_thread(own_asterisk.cli, "logger reload")
    assert (folder / "messages.log").exists()


async def test_links_planted_in_the_log_folder_neither_redirect_nor_stop_rotation(own_asterisk: Asterisk,
                                                                                  tmp_path: Path) -> None:
    supervisor = AsteriskSupervisor(own_asterisk)
    supervisor.max_log_bytes = 4096
    supervisor.log_keep = 3
    folder = own_asterisk.settings.asterisk_dir / "log"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    with (folder / "console.log").open("a") as handle:
        handle.write("y" * 10_000 + "\n")
    os.symlink(victim, folder / "console.log.1")
    (folder / "console.log.2").mkdir()
    (folder / "console.log.2" / "inside").write_text("z")
    await asyncio.to_thread(supervisor.rotate_logs)
    assert victim.read_text() == "precious"
    assert (folder / "console.log.1").is_file() and not (folder / "console.log.1").is_symlink()


async def test_an_unexpected_error_never_ends_supervision(own_asterisk: Asterisk,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor = AsteriskSupervisor(own_asterisk, interval=0.2)
    failures: list[int] = []

    def broken_rotation() -> list[str]:
        failures.append(1)
        raise OSError("something the Asterisk uid arranged")

    monkeypatch.setattr(supervisor, "rotate_logs", broken_rotation)
    supervisor._last_log_check = 0.0
    supervisor.start()
    try:
        await _wait(lambda: len(failures) >= 1, 10)
        pid = own_asterisk.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await _wait(lambda: supervisor.restarts == 1 and supervisor.state == "running", 60)
    finally:
        await supervisor.close()
