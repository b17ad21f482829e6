"""Shared fixtures: a real Asterisk booted once per test session, and a real SIP caller (pjsua2).

The test Asterisk uses its own data directory and its own ports, so it never disturbs an Eva started with
``make run`` on the same machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import postgres_server, postgres_url  # noqa: F401 - shared fixtures: a real PostgreSQL
from voicebot.asterisk.image import image_ready
from voicebot.asterisk.process import Asterisk
from voicebot.config import Settings
from voicebot.harness import free_udp_port, isolated_settings
from voicebot.sipcaller import Action, CallResult, CallScript, place_call


@pytest.fixture(scope="session")
def eva_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for the test instance: private data dir, shifted ports, generated secrets."""
    return isolated_settings(tmp_path_factory.mktemp("eva-data"))


@pytest.fixture(scope="session")
def asterisk(eva_settings: Settings) -> Iterator[Asterisk]:
    """The real Asterisk 22, booted once for the session and stopped at the end."""
    from voicebot.setup import _prompt_run

    if not image_ready(eva_settings.asterisk_root):
        pytest.fail(f"no Asterisk image at {eva_settings.asterisk_root}: run `make setup`")
    _prompt_run(eva_settings)
    instance = Asterisk(eva_settings)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


class Caller:
    """Places real SIP calls into the test Asterisk, as the local carrier would."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.count = 0

    def script(self, number: str, *actions: Action, record: bool = True, timeout: float = 15.0,
               bind_ip: str | None = None, from_user: str = "caller") -> CallScript:
        self.count += 1
        return CallScript(
            uri=f"sip:{number}@{self.settings.bind_host}:{self.settings.sip_port}",
            actions=tuple(actions),
            record_path=str(self.workdir / f"call{self.count}.wav") if record else "",
            timeout=timeout,
            bind_ip=bind_ip or self.settings.local_carrier_ip,
            bind_port=free_udp_port(),
            from_user=from_user,
        )

    def call(self, number: str, *actions: Action, record: bool = True, timeout: float = 15.0,
             bind_ip: str | None = None, from_user: str = "caller") -> CallResult:
        return place_call(self.script(number, *actions, record=record, timeout=timeout, bind_ip=bind_ip,
                                      from_user=from_user))


@pytest.fixture
def caller(asterisk: Asterisk, eva_settings: Settings, tmp_path: Path) -> Caller:
    return Caller(eva_settings, tmp_path)
