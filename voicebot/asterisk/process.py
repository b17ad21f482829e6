"""Start, stop and query Eva's Asterisk.

Asterisk runs inside the chroot image with ``-C /eva/<id>/etc/asterisk.conf``; the instance folder
(``settings.asterisk_dir``) is bind-mounted at ``/eva/<id>``.  The chroot shares the host network namespace,
so ARI, AMI, SIP and RTP are on the host's loopback.  These functions are blocking (subprocess) and meant
for the CLI and test fixtures; the async server calls them through an executor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from voicebot.asterisk.files import open_append, read_tail
from voicebot.asterisk.image import image_ready, repair_image_modes
from voicebot.asterisk.render import instance_path, render_config
from voicebot.config import Settings
from voicebot.errors import AsteriskError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AsteriskStatus:
    running: bool
    pid: int | None
    version: str
    uptime: str


class Asterisk:
    """One Asterisk instance, identified by the settings' data directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.asterisk_root
        self.inner = instance_path(settings)
        self.mountpoint = self.root / self.inner.lstrip("/")
        self.pidfile = settings.asterisk_dir / "asterisk.pid"
        self.console_log = settings.asterisk_dir / "log" / "console.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ helpers
    def _conf(self) -> str:
        return f"{self.inner}/etc/asterisk.conf"

    def _mounted(self) -> bool:
        target = str(self.mountpoint.resolve())
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            return any(line.split()[4] == target for line in handle)

    def _mount(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if self._mounted():
            return
        result = subprocess.run(["mount", "--bind", str(self.settings.asterisk_dir), str(self.mountpoint)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise AsteriskError(f"cannot bind-mount the instance folder: {result.stderr.strip()}")

    def _umount(self) -> None:
        if self._mounted():
            subprocess.run(["umount", str(self.mountpoint)], capture_output=True, check=False)

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        # After a reboot or a kill -9 the pid may belong to another program now: only trust our Asterisk.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if not any(arg.endswith(b"asterisk") for arg in cmdline) or self._conf().encode() not in cmdline:
            return None
        return pid

    def alive(self) -> bool:
        """Is the Asterisk this object started (or the one its pidfile names) still running?"""
        if self._proc is not None:
            return self._proc.poll() is None  # also reaps a crashed child
        return self.pid() is not None

    def cli(self, command: str, *, timeout: float = 30.0) -> str:
        """Run one Asterisk CLI command and return its output."""
        try:
            result = subprocess.run(
                ["chroot", str(self.root), "/usr/sbin/asterisk", "-C", self._conf(), "-rx", command],
                capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AsteriskError(f"Asterisk CLI command timed out after {timeout:.0f}s: {command}") from exc
        if result.returncode != 0 or "Unable to connect to remote asterisk" in result.stdout:
            raise AsteriskError(f"Asterisk is not running (CLI: {(result.stdout + result.stderr).strip()})")
        return result.stdout

    def log_tail(self, lines: int = 40) -> str:
        chunks = []
        for path in (self.console_log, self.settings.asterisk_dir / "log" / "messages.log"):
            text = read_tail(path, offset=-200 * lines).decode("utf-8", errors="replace")
            if text:
                chunks.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(chunks) or "(no Asterisk log yet)"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> int:
        """Render config, mount, start Asterisk and wait until it is fully booted.  Returns the pid."""
        if not image_ready(self.root):
            raise AsteriskError(f"no Asterisk image at {self.root}: run `eva setup` first")
        existing = self.pid()
        if existing is not None:
            self.cli("core waitfullybooted", timeout=self.settings.asterisk_boot_timeout)
            return existing
        repair_image_modes(self.root)  # an image built under a private umask could not reach /eva/<id>
        render_config(self.settings)  # also gives every instance folder its owner and mode
        self._mount()
        console = open_append(self.console_log)  # log/ is Asterisk's: no link followed
        try:
            proc = subprocess.Popen(
                ["chroot", str(self.root), "/usr/sbin/asterisk", "-C", self._conf(), "-f", "-n", "-q"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            os.close(console)
        self._proc = proc
        self.pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + self.settings.asterisk_boot_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._umount()
                raise AsteriskError(f"Asterisk exited during boot (exit {proc.returncode}).\n{self.log_tail()}")
            try:
                self.cli("core waitfullybooted", timeout=max(1.0, deadline - time.monotonic()))
                log.info("Asterisk is fully booted (pid %d)", proc.pid)
                return proc.pid
            except AsteriskError:
                time.sleep(0.2)
        self.stop()
        raise AsteriskError(
            f"Asterisk did not finish booting in {self.settings.asterisk_boot_timeout:.0f}s.\n{self.log_tail()}")

    def stop(self, *, timeout: float = 20.0) -> None:
        """Stop Asterisk gracefully (then by signal) and unmount.  Idempotent."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(AsteriskError):
                self.cli("core stop now", timeout=timeout)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        if self._proc is not None:
            self._proc.wait(timeout=timeout)
            self._proc = None
        self.pidfile.unlink(missing_ok=True)
        self._umount()

    def status(self) -> AsteriskStatus:
        pid = self.pid()
        if pid is None:
            return AsteriskStatus(False, None, "", "")
        try:
            version = self.cli("core show version").strip()
            uptime = self.cli("core show uptime").strip()
        except AsteriskError:
            return AsteriskStatus(False, pid, "", "")
        return AsteriskStatus(True, pid, version, uptime)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

