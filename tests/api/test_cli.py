"""``eva user`` and ``eva apikey``: what they create works against the API, what they revoke stops working."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from models.db import make_engine
from tests.api.conftest import offline_settings, start_api
from voicebot.cli import main

pytestmark = pytest.mark.db  # every command here runs `eva` against a data dir it migrates


def run(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_users_and_keys_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    for name in ("EVA_DATABASE_URL", "EVA_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EVA_DATA_DIR", str(data))

    code, out, _ = run(["user", "create", "boss", "--role", "admin", "--password-stdin"], capsys, monkeypatch,
                       "boss password 1\n")
    assert code == 0 and "created admin 'boss'" in out
    code, out, err = run(["user", "create", "shorty", "--password-stdin"], capsys, monkeypatch, "short\n")
    assert code == 2 and "[invalid_input]" in err
    code, out, err = run(["user", "create", "boss", "--password-stdin"], capsys, monkeypatch, "another pw 12\n")
    assert code == 2 and "[conflict]" in err
    code, out, _ = run(["user", "list", "--json"], capsys, monkeypatch)
    assert [(u["username"], u["role"]) for u in json.loads(out)] == [("boss", "admin")]
    code, out, _ = run(["apikey", "create", "crm", "--role", "designer"], capsys, monkeypatch)
    assert code == 0
    key = next(line for line in out.splitlines() if line.startswith("eva_"))
    key_id = int(re.search(r"API key (\d+)", out).group(1))  # type: ignore[union-attr]
    code, out, _ = run(["apikey", "list"], capsys, monkeypatch)
    assert "crm" in out and key not in out  # listed, never shown again

    engine = make_engine(f"sqlite:///{data / 'eva.db'}")
    api = await start_api(offline_settings(data), engine, offline_asterisk=True)
    try:
        body = await api.login("boss", "boss password 1")
        boss = {"Authorization": f"Bearer {body['access_token']}"}
        assert (await api.call("GET", "/api/v1/users", role=None, headers=boss))[0] == 200
        status, me = await api.call("GET", "/api/v1/auth/me", role=None, headers={"X-API-Key": key})
        assert (status, me["role"]) == (200, "designer")

        code, out, _ = run(["apikey", "revoke", str(key_id)], capsys, monkeypatch)
        assert code == 0
        assert (await api.call("GET", "/api/v1/auth/me", role=None, headers={"X-API-Key": key}))[0] == 401
        code, out, _ = run(["user", "passwd", "boss", "--password-stdin"], capsys, monkeypatch, "new boss pw 2\n")
        assert code == 0
        assert (await api.call("GET", "/api/v1/auth/me", role=None, headers=boss))[0] == 401
        await api.login("boss", "new boss pw 2")
        code, out, _ = run(["user", "delete", "boss"], capsys, monkeypatch)  # "admin" (seeded) remains
        assert code == 0
        response = await api.client.post("/api/v1/auth/login", json={"username": "boss", "password": "new boss pw 2"})
        assert response.status == 401
    finally:
        await api.client.close()
        engine.dispose()
