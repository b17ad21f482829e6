"""File-system rules between root Eva and the Asterisk user, in one place.

Asterisk runs as its own uid inside the chroot; Eva (root, for mount/chroot) writes its configuration and reads
its logs.  Two classes of bug live here, so every path the two share goes through these functions:

* **Modes that depend on the caller's umask.**  The CLI runs under ``umask 027``; a folder created with
  ``mkdir()`` is then 0750 root and the Asterisk user cannot traverse it (Asterisk did not boot on any fresh
  machine for that reason).  Every folder and file Asterisk must reach gets an explicit mode and group here.
* **Root following a link the Asterisk user planted.**  Asterisk's uid can only write where it must (database,
  spool, run, log); its configuration and sounds are root-owned and group-readable, so it cannot plant links
  there.  On top of that, root never follows a link in the shared tree: temporary files are created with
  ``O_EXCL | O_NOFOLLOW`` relative to a directory handle and renamed over the target (``rename`` replaces a link,
  it never writes through it), and files root opens in Asterisk-writable folders are opened ``O_NOFOLLOW`` and
  must be regular files.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from voicebot.errors import AsteriskError

DIR_MODE = 0o750
"""Folders Asterisk reads (group) or owns."""
FILE_MODE = 0o640
"""Files Asterisk reads: root-owned, group asterisk."""

READ_ONLY_SUBDIRS = ("etc", "etc/dialplan", "sounds")
"""Root-owned, group-readable by Asterisk: what it reads but must never be able to change."""
WRITABLE_SUBDIRS = ("db", "spool", "spool/recording", "run", "log")
"""Owned by the Asterisk user: what it writes."""
SUBDIRS = (*READ_ONLY_SUBDIRS, *WRITABLE_SUBDIRS)


def _nofollow_dir(path: Path) -> int:
    """Open a folder for use as ``dir_fd``; refuse if the folder itself is a link."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise AsteriskError(f"cannot open folder {path}: {exc.strerror}") from exc


def write_atomic(path: Path, text: str, *, mode: int = FILE_MODE, gid: int | None = None) -> None:
    """Replace ``path`` with ``text`` atomically without ever following a link.

    The temporary file is created exclusively (``O_EXCL | O_NOFOLLOW``) in the target's folder through a directory
    handle, its mode and group are set on the open descriptor (``fchmod``/``fchown``: no path is looked up again),
    then it is renamed over the target.  A link or file planted under the temporary name is removed first: unlink
    removes the link itself, never what it points to.
    """
    dir_fd = _nofollow_dir(path.parent)
    tmp = f".{path.name}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)  # the umask does not decide who can read it
            if gid is not None and os.geteuid() == 0:
                os.fchown(fd, 0, gid)
            data = text.encode("utf-8")
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise AsteriskError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        os.close(dir_fd)


def open_regular(path: Path, flags: int, mode: int = 0o640) -> int:
    """Open ``path`` without following a link, and only if it is a regular file (not a FIFO, device or link)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: Path) -> int:
    """An append descriptor for a log root writes into an Asterisk-writable folder (handed to Asterisk as stdout).

    A link or other non-regular file in its place (only Asterisk's uid can have put it there) is removed and a
    fresh file created: never written through, and never a reason for Asterisk not to start.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        return open_regular(path, flags)
    except OSError:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(path)
    try:
        return open_regular(path, flags | os.O_EXCL)
    except OSError as exc:
        raise AsteriskError(f"cannot open {path}: {exc}") from exc


def read_tail(path: Path, *, offset: int = 0, limit: int = 1_000_000) -> bytes:
    """Read up to ``limit`` bytes of ``path`` from ``offset``; a link or non-regular file reads as empty."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        if offset < 0:
            offset = max(0, os.fstat(fd).st_size + offset)
        return os.pread(fd, limit, offset)
    finally:
        os.close(fd)


def ensure_tree(base: Path, uid: int | None, gid: int | None) -> None:
    """Create the instance folder and give each part the owner and mode its role needs, whatever the umask.

    ``uid``/``gid`` are the Asterisk user's (None when not root or Asterisk runs elsewhere: modes only).
    The base folder is root-owned, group-traversable; read-only parts are root's with group read; writable
    parts belong to Asterisk.  Files root left in the writable parts are handed over (``lchown``: links are not
    followed); anything Asterisk owns in the read-only parts is taken back, so a link it planted before this
    layout existed cannot stay.
    """
    root = os.geteuid() == 0 and uid is not None and gid is not None
    base.mkdir(parents=True, exist_ok=True)
    _set(base, 0, gid, DIR_MODE, root)
    for sub in SUBDIRS:
        folder = base / sub
        if folder.is_symlink():
            folder.unlink()  # only Asterisk's uid could have put a link here (it owned the base folder once)
        folder.mkdir(parents=True, exist_ok=True)
    for sub in READ_ONLY_SUBDIRS:
        folder = base / sub
        _set(folder, 0, gid, DIR_MODE, root)
        for entry in folder.iterdir():
            st = entry.lstat()
            if stat.S_ISLNK(st.st_mode):
                if root and st.st_uid != 0:
                    entry.unlink()  # planted by Asterisk's uid before its folders were made read-only
                continue
            if stat.S_ISREG(st.st_mode):
                _set(entry, 0, gid, FILE_MODE, root)
    for sub in WRITABLE_SUBDIRS:
        folder = base / sub
        if root:
            assert uid is not None and gid is not None
            for dirpath, dirnames, filenames in os.walk(folder):
                for name in (*dirnames, *filenames):
                    os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
        _set(folder, uid, gid, DIR_MODE, root)


def _set(path: Path, uid: int | None, gid: int | None, mode: int, as_root: bool) -> None:
    """Owner and mode of a folder or regular file the caller has checked is not a link."""
    if as_root:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid, follow_symlinks=False)
    os.chmod(path, mode)
