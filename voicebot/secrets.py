"""Generated secrets (ARI, AMI, JWT): created once into ``<data_dir>/secrets.env`` with mode 0600.

They are never committed, printed or logged.  Values already set in the environment win.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

from voicebot.config import Settings, read_env_file

GENERATED = {
    "EVA_ARI_PASSWORD": "ari_password",
    "EVA_AMI_PASSWORD": "ami_password",
    "EVA_JWT_SECRET": "jwt_secret",
}


def ensure_secrets(settings: Settings) -> Settings:
    """Create any missing secret in the secrets file and return settings carrying all of them."""
    path = settings.secrets_file
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = read_env_file(path)
    changed = False
    for key in GENERATED:
        if not existing.get(key):
            existing[key] = secrets.token_urlsafe(24)
            changed = True
    if changed:
        _write_private(path, "".join(f"{k}={v}\n" for k, v in sorted(existing.items())))
    fill: dict[str, Any] = {field: existing[key] for key, field in GENERATED.items() if not getattr(settings, field)}
    return replace(settings, **fill) if fill else settings


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
