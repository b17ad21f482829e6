"""The admin API's handle on Eva's Asterisk: the rendered config files on disk, and AMI for reloads.

Config changes (trunks, dialplans) are serialised by one lock: each one writes a file, reloads the module and
reads what Asterisk logged about it, and two interleaved reloads would mix up whose log lines are whose.
Without AMI (``ami`` None) the API runs *offline*: files are written and take effect when Asterisk next
starts.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from admin_api.ami import AmiClient
from voicebot.asterisk.files import FILE_MODE, read_tail, write_atomic
from voicebot.config import Settings

_LOG_LINE = re.compile(
    r"^\[[^\]]+\]\s+(WARNING|ERROR)\[\d+\](?:\[[^\]]*\])?\s+(?P<file>[^:\s]+):\s*(?P<text>.*)$"
)


class AsteriskLink:
    def __init__(self, settings: Settings, ami: AmiClient | None) -> None:
        self.settings = settings
        self.ami = ami
        self.lock = asyncio.Lock()

    @property
    def live(self) -> bool:
        return self.ami is not None

    @property
    def etc_dir(self) -> Path:
        return self.settings.asterisk_dir / "etc"

    @property
    def log_file(self) -> Path:
        return self.settings.asterisk_dir / "log" / "messages.log"

    # ------------------------------------------------------------------ files (blocking: call via to_thread)
    def write_config(self, path: Path, text: str) -> None:
        """Atomically replace ``path``: root-owned, mode 0640, group of its folder (Asterisk's), no link followed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, mode=FILE_MODE, gid=path.parent.stat().st_gid)

    def read_text(self, path: Path) -> str | None:
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def log_offset(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return -1

    def _log_since(self, offset: int) -> str:
        if offset < 0:
            return ""
        # log/ is Asterisk's: never follow a link it could have put there.
        return read_tail(self.log_file, offset=offset).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ reloads
    async def reload(self, command: str, *, marker: str = "") -> list[tuple[str, str, str]]:
        """Run a reload command; return the ``(level, source file, text)`` warnings and errors it logged.

        Asterisk logs from its logger thread, slightly after the command returns; when ``marker`` (a text the
        reload always logs last) is given we wait for it (at most a second), else we give the logger 200 ms.
        """
        assert self.ami is not None
        offset = await asyncio.to_thread(self.log_offset)
        await self.ami.command(command, limit_s=30.0)
        deadline = time.monotonic() + (1.0 if marker else 0.2)
        text = ""
        while True:
            text = await asyncio.to_thread(self._log_since, offset)
            if (marker and marker in text) or time.monotonic() >= deadline or offset < 0:
                break
            await asyncio.sleep(0.05)
        found = []
        for line in text.splitlines():
            match = _LOG_LINE.match(line)
            if match:
                found.append((match.group(1), match.group("file").strip(), match.group("text").strip()))
        return found
