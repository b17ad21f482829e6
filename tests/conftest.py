"""Shared fixtures: a real Asterisk booted once per test session, and a real SIP caller (pjsua2).

The test Asterisk uses its own data directory and its own ports, so it never disturbs an Eva started with
``make run`` on the same machine.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import postgres_server, postgres_url  # noqa: F401 - shared fixtures: a real PostgreSQL
from voicebot.asterisk.image import image_ready
from voicebot.asterisk.process import Asterisk
from voicebot.config import Settings
from voicebot.secrets import ensure_secrets
from voicebot.sipcaller import Action, CallResult, CallScript, place_call

def _port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_test_ports() -> dict[str, int]:
    """Ports for this test session's Asterisk: a free slot, so parallel test sessions never collide."""
    for slot in range(40):
        ports = {
            "sip_port": 15060 + slot * 10,
            "ari_port": 18088 + slot * 10,
            "ami_port": 15038 + slot * 10,
            "api_port": 18080 + slot * 10 + 1,
            "rtp_port_start": 40000 + slot * 200,
            "rtp_port_end": 40099 + slot * 200,
            "media_port_start": 40100 + slot * 200,
            "media_port_end": 40199 + slot * 200,
        }
        if (_port_free(ports["sip_port"], socket.SOCK_DGRAM) and _port_free(ports["ari_port"], socket.SOCK_STREAM)
                and _port_free(ports["ami_port"], socket.SOCK_STREAM)):
            return ports
    raise RuntimeError("no free port slot for a test Asterisk")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def eva_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for the test instance: private data dir, shifted ports, generated secrets."""
    from voicebot.setup import _gguf_path

    data = tmp_path_factory.mktemp("eva-data")
    # Models are shared with the checkout's own data directory (assembled there by `make setup`).
    base = Settings.load({}).with_(data_dir=data, llm_model_path=_gguf_path(Settings.load({})),
                                   **pick_test_ports())
    return ensure_secrets(base)


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
               bind_ip: str | None = None) -> CallScript:
        self.count += 1
        return CallScript(
            uri=f"sip:{number}@{self.settings.bind_host}:{self.settings.sip_port}",
            actions=tuple(actions),
            record_path=str(self.workdir / f"call{self.count}.wav") if record else "",
            timeout=timeout,
            bind_ip=bind_ip or self.settings.local_carrier_ip,
            bind_port=free_udp_port(),
        )

    def call(self, number: str, *actions: Action, record: bool = True, timeout: float = 15.0,
             bind_ip: str | None = None) -> CallResult:
        return place_call(self.script(number, *actions, record=record, timeout=timeout, bind_ip=bind_ip))


@pytest.fixture
def caller(asterisk: Asterisk, eva_settings: Settings, tmp_path: Path) -> Caller:
    return Caller(eva_settings, tmp_path)
