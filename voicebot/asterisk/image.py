"""The Asterisk 22 image: a minimal Debian-unstable chroot made by debootstrap.

Debian 12 has no Asterisk package; unstable has 22.x.  The image is read-mostly and shared by every Eva
instance on the machine (it lives in a cache folder, outside git); each instance mounts its own folder at
``/eva/<id>`` inside it (see :mod:`voicebot.asterisk.process`).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from voicebot.errors import SetupError

MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("asterisk", "asterisk-modules")
MARKER = ".eva-image-ok"


MOUNT_PARENT = "eva"
"""Folder inside the image under which each instance folder is bind-mounted (``/eva/<id>``)."""
PUBLIC_DIR_MODE = 0o755
"""The image's root and ``/eva``: every uid inside the chroot (Asterisk's above all) must traverse them."""


def image_ready(root: Path) -> bool:
    return (root / MARKER).exists() and (root / "usr" / "sbin" / "asterisk").exists()


def _public_dirs(root: Path) -> tuple[Path, ...]:
    return (root, root / MOUNT_PARENT)


def image_modes_ok(root: Path) -> bool:
    """True when the folders Asterisk must traverse are root-owned and 0755 (whatever umask created them)."""
    for folder in _public_dirs(root):
        try:
            st = folder.lstat()
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) != PUBLIC_DIR_MODE or st.st_uid != 0:
            return False
    return True


def repair_image_modes(root: Path) -> None:
    """Give the image's root and mount parent explicit modes.

    An image built by an earlier Eva under ``umask 027`` has ``/eva`` as 0750 root, so Asterisk's uid cannot reach
    its own instance folder; this repairs it in place (no rebuild, nothing for the user to delete).
    """
    mount_parent = root / MOUNT_PARENT
    if mount_parent.is_symlink():
        mount_parent.unlink()
    mount_parent.mkdir(exist_ok=True)
    for folder in _public_dirs(root):
        os.chmod(folder, PUBLIC_DIR_MODE)
        if os.geteuid() == 0:
            os.chown(folder, 0, 0, follow_symlinks=False)


def build_image(root: Path, *, mirror: str = MIRROR) -> None:
    """debootstrap the chroot into ``root`` (atomically: a half-built image is never mistaken for a good one).

    An image that is already there only has its folder modes repaired.
    """
    if image_ready(root):
        repair_image_modes(root)
        return
    if shutil.which("debootstrap") is None:
        raise SetupError("debootstrap is not installed (apt-get install debootstrap)")
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "sid", str(tmp), mirror]
    # A system image: the folders debootstrap itself creates must not inherit Eva's private umask.
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, umask=0o022)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise SetupError(f"debootstrap failed (exit {result.returncode}); retry `eva setup`.\n{tail}")
    repair_image_modes(tmp)
    ensure_private_uid(tmp)
    (tmp / MARKER).write_text("asterisk image built by eva setup\n", encoding="utf-8")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)


def _ids(path: Path) -> dict[str, int]:
    ids: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split(":")
            if len(parts) > 2 and parts[2].isdigit():
                ids[parts[0]] = int(parts[2])
    return ids


def ensure_private_uid(root: Path) -> tuple[int, int]:
    """Give the chroot's ``asterisk`` user a uid/gid that no host account has, and return them.

    Debian assigns it a low system uid (101) that on the host often belongs to another service (postgres):
    files Asterisk owns under the bind-mounted data folder would then belong to that host account.
    """
    inner_users, inner_groups = _ids(root / "etc" / "passwd"), _ids(root / "etc" / "group")
    if "asterisk" not in inner_users or "asterisk" not in inner_groups:
        raise SetupError("the Asterisk image has no asterisk user; rebuild it (`eva setup`)")
    host_uids = set(_ids(Path("/etc/passwd")).values())
    host_gids = set(_ids(Path("/etc/group")).values())
    uid, gid = inner_users["asterisk"], inner_groups["asterisk"]
    if uid >= 60000 and uid not in host_uids and gid not in host_gids:
        return uid, gid
    taken_u = host_uids | set(inner_users.values())
    taken_g = host_gids | set(inner_groups.values())
    new = next(n for n in range(60100, 65000) if n not in taken_u and n not in taken_g)
    for cmd in (["groupmod", "-g", str(new), "asterisk"], ["usermod", "-u", str(new), "-g", str(new), "asterisk"]):
        result = subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SetupError(f"cannot change the chroot's asterisk ids: {result.stderr.strip()}")
    # Files the package created for its user (outside its home, which usermod already moved over).
    for folder in ("etc/asterisk", "var/lib/asterisk", "var/spool/asterisk", "var/log/asterisk", "var/run/asterisk"):
        target = root / folder
        if target.exists():
            for dirpath, dirnames, filenames in os.walk(target):
                for name in [*dirnames, *filenames, "."]:
                    path = os.path.join(dirpath, name)
                    st = os.lstat(path)
                    if st.st_uid == uid or st.st_gid == gid:
                        os.lchown(path, new if st.st_uid == uid else -1, new if st.st_gid == gid else -1)
    return new, new
