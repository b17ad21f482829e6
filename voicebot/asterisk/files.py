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


def write_atomic(path: Path, text: str | bytes, *, mode: int = FILE_MODE, gid: int | None = None) -> None:
    """Replace ``path`` with ``text`` (or bytes) atomically without ever following a link.

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
            data = text.encode("utf-8") if isinstance(text, str) else text
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


def open_below(base: Path, relative: str) -> int:
    """Open the regular file ``base/relative`` for reading, each folder component ``O_NOFOLLOW`` from ``base``.

    For files root serves from Asterisk-writable folders (recordings): a link anywhere on the way, or a
    non-regular file, raises ``FileNotFoundError`` instead of being followed.  The caller owns the descriptor.
    """
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise FileNotFoundError(relative)
    fd = _nofollow_dir(base)
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                raise FileNotFoundError(relative) from exc
            os.close(fd)
            fd = child
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            raise FileNotFoundError(relative) from exc
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise FileNotFoundError(relative)
    os.set_blocking(file_fd, True)
    return file_fd


def unlink_below(base: Path, relative: str) -> bool:
    """Remove the entry ``base/relative`` (a file, or a link itself, never what it points to), each folder on the
    way opened ``O_NOFOLLOW`` from ``base``, so a folder swapped for a link cannot aim the unlink elsewhere.
    Returns False when there was nothing to remove; raises OSError when it cannot be removed."""
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise FileNotFoundError(relative)
    try:
        fd = _nofollow_dir(base)
    except FileNotFoundError:
        return False
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return False
            os.close(fd)
            fd = child
        try:
            os.unlink(parts[-1], dir_fd=fd)
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


def ensure_tree(base: Path, uid: int | None, gid: int | None) -> None:
    """Create the instance folder and give each part the owner and mode its role needs, whatever the umask.

    ``uid``/``gid`` are the Asterisk user's (None when not root or Asterisk runs elsewhere: modes only).
    The base folder is root-owned, group-traversable; read-only parts are root's with group read; writable
    parts belong to Asterisk.  Anything Asterisk owns in the read-only parts is taken back, so a link it planted
    before this layout existed cannot stay.

    Everything works through directory descriptors opened ``O_NOFOLLOW`` from the base (whose own parent, the
    data folder, only root can write) and ``fchown``/``fchmod`` on descriptors: no path is ever looked up twice,
    so the Asterisk uid cannot redirect a chown or chmod to a host file by swapping a folder for a link while
    this runs.  Nothing inside the writable folders is touched: what Asterisk created there is already its own.
    """
    as_root = os.geteuid() == 0 and uid is not None and gid is not None
    base.mkdir(parents=True, exist_ok=True)
    base_fd = _nofollow_dir(base)
    try:
        _own(base_fd, 0, gid, DIR_MODE, as_root)  # first: from now on only root changes base's entries
        for sub in READ_ONLY_SUBDIRS:
            fd = _subdir(base_fd, sub)
            try:
                _own(fd, 0, gid, DIR_MODE, as_root)  # before its entries, for the same reason
                _take_back_entries(fd, gid, as_root)
            finally:
                os.close(fd)
        for sub in WRITABLE_SUBDIRS:
            fd = _subdir(base_fd, sub)
            try:
                _own(fd, uid, gid, DIR_MODE, as_root)
            finally:
                os.close(fd)
    finally:
        os.close(base_fd)


def _subdir(base_fd: int, relative: str) -> int:
    """Open (creating) ``relative`` below ``base_fd`` one component at a time, never following a link.

    A link or file in the way (only the Asterisk uid can have put it there) is removed — unlink removes the link
    itself — and a real folder made in its place.
    """
    fd = os.dup(base_fd)
    for part in relative.split("/"):
        try:
            child = _open_component(fd, part)
        finally:
            os.close(fd)
        fd = child
    return fd


def _open_component(parent_fd: int, name: str) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(3):
        try:
            return os.open(name, flags, dir_fd=parent_fd)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
        except PermissionError as exc:
            raise AsteriskError(f"cannot open folder {name}: {exc.strerror}") from exc
        except OSError:  # ELOOP (a link) or ENOTDIR (a file) where a folder belongs
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=parent_fd)
    raise AsteriskError(f"the folder {name} keeps being replaced while Eva prepares it")


def _take_back_entries(dir_fd: int, gid: int | None, as_root: bool) -> None:
    for entry in os.scandir(dir_fd):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            if as_root and st.st_uid != 0:
                os.unlink(entry.name, dir_fd=dir_fd)  # planted by Asterisk's uid before its folders were root's
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        try:
            fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue  # replaced since the listing: only a link could be there now, and links are never followed
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                _own(fd, 0, gid, FILE_MODE, as_root)
        finally:
            os.close(fd)


def _own(fd: int, uid: int | None, gid: int | None, mode: int, as_root: bool) -> None:
    """Owner and mode through an open descriptor (nothing to redirect)."""
    if as_root:
        os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
    os.fchmod(fd, mode)
