"""The Asterisk 22 image: a minimal Debian-unstable chroot made by debootstrap.

Debian 12 has no Asterisk package; unstable has 22.x.  The image is read-mostly and shared by every Eva
instance on the machine (it lives in a cache folder, outside git); each instance mounts its own folder at
``/eva/<id>`` inside it (see :mod:`voicebot.asterisk.process`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from voicebot.errors import SetupError

MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("asterisk", "asterisk-modules")
MARKER = ".eva-image-ok"


def image_ready(root: Path) -> bool:
    return (root / MARKER).exists() and (root / "usr" / "sbin" / "asterisk").exists()


def build_image(root: Path, *, mirror: str = MIRROR) -> None:
    """debootstrap the chroot into ``root`` (atomically: a half-built image is never mistaken for a good one)."""
    if image_ready(root):
        return
    if shutil.which("debootstrap") is None:
        raise SetupError("debootstrap is not installed (apt-get install debootstrap)")
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "sid", str(tmp), mirror]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise SetupError(f"debootstrap failed (exit {result.returncode}); retry `eva setup`.\n{tail}")
    (tmp / "eva").mkdir(exist_ok=True)
    (tmp / MARKER).write_text("asterisk image built by eva setup\n", encoding="utf-8")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)


def asterisk_version(root: Path) -> str:
    result = subprocess.run(["chroot", str(root), "/usr/sbin/asterisk", "-V"], capture_output=True, text=True,
                            check=False, timeout=30)
    return result.stdout.strip()
