"""Render ``asterisk/config/*.conf`` and ``dialplan/*.conf`` into an instance folder.

Templates use ``{{name}}`` placeholders (Asterisk itself uses ``${...}``, so we must not).  Every placeholder
must be known: an unknown one is a bug and raises instead of leaving a half-rendered file behind.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from voicebot.asterisk.files import ensure_tree, write_atomic
from voicebot.config import PROJECT_ROOT, Settings
from voicebot.errors import ConfigError, SetupError

TEMPLATE_DIR = PROJECT_ROOT / "asterisk" / "config"
DIALPLAN_DIR = PROJECT_ROOT / "dialplan"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


def instance_id(settings: Settings) -> str:
    """A short stable id for this data directory, so several Eva checkouts can share one chroot image."""
    return hashlib.sha1(str(settings.data_dir.resolve()).encode()).hexdigest()[:10]


def instance_path(settings: Settings) -> str:
    """Where the instance folder appears to Asterisk (inside the chroot, or as configured for a container)."""
    return settings.asterisk_instance_path.rstrip("/") or f"/eva/{instance_id(settings)}"


def template_values(settings: Settings) -> dict[str, str]:
    values = {
        "instance": instance_path(settings),
        "bind_host": settings.bind_host,
        "sip_bind_host": settings.sip_bind_host or settings.bind_host,
        "sip_port": str(settings.sip_port),
        "ari_port": str(settings.ari_port),
        "ami_port": str(settings.ami_port),
        "rtp_port_start": str(settings.rtp_port_start),
        "rtp_port_end": str(settings.rtp_port_end),
        "ari_app": settings.ari_app,
        "ari_apps": ",".join(settings.worker_apps),
        "ari_user": settings.ari_user,
        "ari_password": settings.ari_password,
        "ami_user": settings.ami_user,
        "ami_password": settings.ami_password,
        "local_carrier_ip": settings.local_carrier_ip,
    }
    # RTP follows the SIP address (a wildcard SIP bind cannot name a media address: leave pjsip's default).
    values["rtp_bind"] = (
        "; SIP listens on every address, so RTP does too" if values["sip_bind_host"] in WILDCARD_HOSTS
        else f"media_address = {values['sip_bind_host']}\nbind_rtp_to_media_address = yes")
    for key in ("ari_password", "ami_password"):
        if not values[key]:
            raise ConfigError(f"{key} is empty: run `eva setup` to generate secrets", field=key)
    return values


def render_text(template: str, values: dict[str, str], *, source: str = "template") -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigError(f"{source}: unknown placeholder {{{{{name}}}}}", field=name)
        return values[name]

    return _PLACEHOLDER.sub(sub, template)


def asterisk_ids(settings: Settings) -> tuple[int | None, int | None]:
    """Asterisk's user and group: configured (a container), else the local image's (None, None when unknown)."""
    from voicebot.asterisk.image import ensure_private_uid, image_ready

    if settings.asterisk_uid >= 0 and settings.asterisk_gid >= 0:
        return settings.asterisk_uid, settings.asterisk_gid
    if not settings.manage_asterisk or not image_ready(settings.asterisk_root):
        return None, None
    try:
        return ensure_private_uid(settings.asterisk_root)
    except SetupError as exc:
        raise ConfigError(exc.message) from exc


def render_config(settings: Settings, *, template_dir: Path = TEMPLATE_DIR,
                  dialplan_dir: Path = DIALPLAN_DIR) -> Path:
    """Render all config into ``settings.asterisk_dir/etc`` and return that folder.

    Files are written to a temporary name and renamed, so a running Asterisk never reads a half-written file.
    Dialplan files are copied verbatim (they are Asterisk syntax, edited by people).  Owners and modes come from
    :mod:`voicebot.asterisk.files` (root-owned, readable by Asterisk's group, never by the umask's say).
    """
    base = settings.asterisk_dir
    uid, gid = asterisk_ids(settings)
    ensure_tree(base, uid, gid)
    etc = base / "etc"

    def _atomic_write(path: Path, text: str, *, mode: int) -> None:
        write_atomic(path, text, mode=mode, gid=gid)

    values = template_values(settings)
    for template in sorted(template_dir.glob("*.conf")):
        text = render_text(template.read_text(encoding="utf-8"), values, source=template.name)
        _atomic_write(etc / template.name, text, mode=0o640)
    trunks = etc / "pjsip_trunks.conf"
    if not trunks.exists():
        _atomic_write(trunks, "; SIP trunks managed by Eva's admin API are written here.\n", mode=0o640)
    wanted = {p.name for p in dialplan_dir.glob("*.conf")}
    for stale in (etc / "dialplan").glob("*.conf"):
        if stale.name not in wanted and not (settings.data_dir / "dialplan" / stale.name).exists():
            stale.unlink()
    for source in sorted(dialplan_dir.glob("*.conf")):
        override = settings.data_dir / "dialplan" / source.name
        chosen = override if override.exists() else source
        _atomic_write(etc / "dialplan" / source.name, chosen.read_text(encoding="utf-8"), mode=0o640)
    # Dialplans IVR designers added through the admin API (no packaged counterpart).
    for custom in sorted((settings.data_dir / "dialplan").glob("*.conf")):
        if custom.name not in wanted:
            _atomic_write(etc / "dialplan" / custom.name, custom.read_text(encoding="utf-8"), mode=0o640)
    return etc

