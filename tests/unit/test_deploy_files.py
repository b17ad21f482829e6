"""docker-compose.yml and the Dockerfiles cannot run here (no Docker engine); keep them valid and honest."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import yaml

from voicebot.config import Settings

ROOT = Path(__file__).resolve().parent.parent.parent


def test_compose_is_valid_and_names_only_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"postgres", "chroma", "ollama", "asterisk", "eva"}
    known = {f"EVA_{f.name.upper()}" for f in fields(Settings)}
    env = compose["services"]["eva"]["environment"]
    unknown = [key for key in env if key not in known]
    assert unknown == [], f"compose sets variables Eva does not read: {unknown}"
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    # Eva renders Asterisk's config into the volume the Asterisk container reads at the same path.
    eva_volumes = compose["services"]["eva"]["volumes"]
    asterisk_volumes = compose["services"]["asterisk"]["volumes"]
    assert "eva-asterisk:/var/lib/eva/asterisk" in eva_volumes
    assert f"eva-asterisk:{env['EVA_ASTERISK_INSTANCE_PATH']}" in asterisk_volumes


def test_dockerfiles_copy_what_exists() -> None:
    for dockerfile in (ROOT / "Dockerfile", ROOT / "asterisk" / "Dockerfile"):
        for source in re.findall(r"^COPY (\S+) ", dockerfile.read_text(), flags=re.M):
            assert (dockerfile.parent / source).exists(), f"{dockerfile.name} copies missing {source}"


def test_compose_gives_asterisk_its_files_by_the_uid_its_image_runs_as() -> None:
    """The umask trap, container edition: Eva renders root-owned config with Asterisk's group, so Eva must be told
    the uid/gid the Asterisk image really uses."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["eva"]["environment"]
    dockerfile = (ROOT / "asterisk" / "Dockerfile").read_text()
    assert f"groupmod -g {env['EVA_ASTERISK_GID']} asterisk" in dockerfile
    assert f"usermod -u {env['EVA_ASTERISK_UID']} -g {env['EVA_ASTERISK_GID']} asterisk" in dockerfile
    assert "runuser = asterisk" in (ROOT / "asterisk" / "config" / "asterisk.conf").read_text()
