"""An isolated Eva instance for tests and benchmarks: its own data directory, generated secrets and a free slot
of ports, so it never disturbs an Eva started with ``make run`` (or another test run) on the same machine."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from voicebot.config import Settings
from voicebot.secrets import ensure_secrets

if TYPE_CHECKING:
    from voicebot.sipcaller import CallResult, CallScript


def _port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_held_slots: list[int] = []
"""Lock files of the slots this process holds (kept open until it exits)."""


def _claim(slot: int) -> bool:
    # Two test runs starting at the same moment would otherwise both find a slot free and collide.
    fd = os.open(os.path.join(tempfile.gettempdir(), f"eva-port-slot-{slot}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held_slots.append(fd)
    return True


def free_port_slot() -> dict[str, int]:
    """SIP/ARI/AMI/API ports and RTP/media ranges of the first slot that is free and not claimed by another
    process on this machine."""
    for slot in range(40):
        ports = {
            "sip_port": 15060 + slot * 10,
            "ari_port": 18088 + slot * 10,
            "ami_port": 15038 + slot * 10,
            "api_port": 18080 + slot * 10 + 1,
            # Below Linux's ephemeral range (32768-60999): a port the kernel hands out for port 0 (a test caller's,
            # another instance's client socket) can never be one a parallel instance's RTP is about to bind.
            # Above `make run`'s default 20000-20999.
            "rtp_port_start": 21000 + slot * 200,
            "rtp_port_end": 21099 + slot * 200,
            "media_port_start": 21100 + slot * 200,
            "media_port_end": 21199 + slot * 200,
        }
        if (_port_free(ports["sip_port"], socket.SOCK_DGRAM) and _port_free(ports["ari_port"], socket.SOCK_STREAM)
                and _port_free(ports["ami_port"], socket.SOCK_STREAM)
                and _port_free(ports["api_port"], socket.SOCK_STREAM) and _claim(slot)):
            return ports
    raise RuntimeError("no free port slot for an isolated Eva instance")


def isolated_settings(data_dir: Path) -> Settings:
    """Settings for a private instance in ``data_dir``, with defaults for everything else.

    Only what the installation shares comes from the environment (``EVA_ASTERISK_ROOT``, ``EVA_DATA_DIR`` for the
    assembled models), so CI can point the whole run at a freshly built image and data folder.
    """
    from voicebot.llm.embedded import default_gguf_path
    from voicebot.stt.multilingual import model_dir

    installed = Settings.load()
    base = Settings.load({}).with_(asterisk_root=installed.asterisk_root)
    multilingual = installed.stt_multilingual_model or str(model_dir(installed.models_dir))
    return ensure_secrets(base.with_(data_dir=data_dir, llm_model_path=str(default_gguf_path(installed)),
                                     stt_multilingual_model=multilingual, **free_port_slot()))


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def udp_port_bound(host: str, port: int) -> bool:
    """Someone (a callee process) has bound this UDP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


async def start_callee(script: CallScript) -> asyncio.Future[CallResult]:
    """A pjsua2 callee (``script`` with ``bind_ip``/``bind_port``) running, returned once its SIP socket is up
    (state, not a guessed delay) or it has already ended; the future is its result."""
    from voicebot.sipcaller import place_call_async

    result = asyncio.ensure_future(place_call_async(script))
    for _ in range(200):
        if udp_port_bound(script.bind_ip, script.bind_port) or result.done():
            break
        await asyncio.sleep(0.05)
    return result
