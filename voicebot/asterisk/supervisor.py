"""Keep the local Asterisk alive and its logs bounded while ``eva run`` runs.

A crash of Asterisk used to go unnoticed: ARI kept reconnecting for ever, ``/health`` said ok and every call
failed until a person acted.  The supervisor checks every ``supervise_interval`` seconds; when Asterisk is gone it
says so (``state``, read by ``/health``), restarts it with a backoff, and the ARI client's reconnect brings calls
back.  It also rotates Asterisk's logs past ``log_max_mb`` (Asterisk's own ``logger rotate`` for the files it
writes, copy-and-truncate for the console log whose descriptor it holds) and keeps ``log_keep`` old ones.

The blocking process work (``Asterisk.start``, the CLI) runs in threads; the loop only waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import time
from pathlib import Path

from voicebot.asterisk.files import open_regular, read_tail
from voicebot.asterisk.process import Asterisk
from voicebot.errors import AsteriskError

log = logging.getLogger(__name__)

ASTERISK_LOGS = ("messages.log", "security.log")
"""Files Asterisk's logger writes (logger.conf) and rotates itself on ``logger rotate``."""
LOG_CHECK_EVERY_S = 60.0
MAX_BACKOFF_S = 30.0


class AsteriskSupervisor:
    """Restarts a crashed Asterisk and rotates its logs.  ``start()`` then ``close()`` (idempotent)."""

    def __init__(self, asterisk: Asterisk, *, interval: float | None = None) -> None:
        self.asterisk = asterisk
        settings = asterisk.settings
        self.interval = settings.supervise_interval if interval is None else interval
        self.max_log_bytes = settings.log_max_mb * 1024 * 1024
        self.log_keep = settings.log_keep
        self.state = "running"
        """running | down | restarting"""
        self.restarts = 0
        self.last_error = ""
        self.down_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_log_check = time.monotonic()

    def snapshot(self) -> dict[str, object]:
        """What ``/health`` shows."""
        return {"state": self.state, "restarts": self.restarts,
                "down_for_s": round(time.monotonic() - self.down_since, 1) if self.down_since else 0.0}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="eva-asterisk-supervisor")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        backoff = self.interval
        while True:
            await asyncio.sleep(self.interval if self.state == "running" else backoff)
            try:
                backoff = await self._check(backoff)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Nothing may end supervision: not a file the Asterisk uid planted in its log folder, not an
                # unexpected error while restarting.  Log it, back off, keep watching.
                log.exception("Asterisk supervision step failed; trying again in %.0fs", backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _check(self, backoff: float) -> float:
        """One supervision step; returns the next backoff."""
        if await asyncio.to_thread(self.asterisk.alive):
            if self.state != "running":
                self._recovered()
            if time.monotonic() - self._last_log_check >= LOG_CHECK_EVERY_S:
                self._last_log_check = time.monotonic()
                await asyncio.to_thread(self.rotate_logs)
            return self.interval
        if self.state == "running":
            self.down_since = time.monotonic()
            log.error("Asterisk is not running (it crashed or was killed); restarting it. Log tail:\n%s",
                      await asyncio.to_thread(self.asterisk.log_tail, 15))
        self.state = "restarting"
        try:
            await asyncio.to_thread(self.asterisk.start)
        except AsteriskError as exc:
            self.state = "down"
            self.last_error = exc.message
            log.error("restarting Asterisk failed [%s]; next try in %.0fs: %s", exc.code, backoff,
                      exc.message.splitlines()[0])
            return min(MAX_BACKOFF_S, backoff * 2)
        except Exception:
            self.state = "down"
            raise
        self.restarts += 1
        self._recovered()
        return self.interval

    def _recovered(self) -> None:
        down = time.monotonic() - self.down_since if self.down_since else 0.0
        log.warning("Asterisk is running again (restart %d, down %.1fs)", self.restarts, down)
        self.state = "running"
        self.down_since = None
        self.last_error = ""

    # ------------------------------------------------------------------ logs (blocking)
    def rotate_logs(self) -> list[str]:
        """Rotate what is over the size limit; returns the names rotated."""
        folder = self.asterisk.settings.asterisk_dir / "log"
        rotated: list[str] = []
        if any(_size(folder / name) > self.max_log_bytes for name in ASTERISK_LOGS):
            try:
                self.asterisk.cli("logger rotate")
            except AsteriskError as exc:
                log.warning("Asterisk log rotation failed: %s", exc.message)
            else:
                rotated.extend(ASTERISK_LOGS)
        console = folder / "console.log"
        if _size(console) > self.max_log_bytes:
            self._copy_truncate(console)
            rotated.append(console.name)
        for name in (*ASTERISK_LOGS, "console.log"):
            self._prune(folder, name)
        return rotated

    def _copy_truncate(self, path: Path) -> None:
        # Asterisk writes its console to a descriptor Eva opened (O_APPEND): the file cannot be renamed away,
        # so keep a copy of the tail and truncate in place.  log/ is Asterisk's: nothing here follows a link, and
        # whatever sits at a rotation name (a link, a folder) is removed, never written through.
        kept = read_tail(path, offset=-self.max_log_bytes)
        for index in range(self.log_keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.is_file() and not older.is_symlink():
                _clear(path.with_name(f"{path.name}.{index + 1}"))
                os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
        first = path.with_name(f"{path.name}.1")
        _clear(first)
        fd = os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, kept)
        finally:
            os.close(fd)
        try:
            fd = open_regular(path, os.O_WRONLY)
        except OSError:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def _prune(self, folder: Path, name: str) -> None:
        for old in folder.glob(f"{name}.*"):
            suffix = old.name[len(name) + 1:]
            if suffix.isdigit() and int(suffix) >= self.log_keep:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()


def _clear(path: Path) -> None:
    """Remove whatever is at ``path`` (a file, a link, a folder the Asterisk uid made), without following links."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # rmtree does not follow links inside it
    else:
        path.unlink()


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0
