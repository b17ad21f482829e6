"""Login and password-check limits under attack, against the real HTTP server (finding F6).

Clients come from distinct loopback addresses (127.0.0.2, 127.0.0.3, ...: Linux routes all of 127/8 to ``lo``),
so per-address keys are exercised with real sockets, not with forged headers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.engine import Engine

from admin_api import accounts
from admin_api.auth import LoginLimiter
from admin_api.passwords import DEFAULT_ROUNDS
from models.db import session_scope
from tests.api.conftest import PASSWORD, Api, offline_settings, start_api
from voicebot.errors import RateLimited

BOSS_PASSWORD = "the real admin's passphrase"


@asynccontextmanager
async def client_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections leave from ``address`` (a real distinct source IP)."""
    connector = aiohttp.TCPConnector(limit=0, local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def _login(session: aiohttp.ClientSession, api: Api, username: str, password: str,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with session.post(api.client.make_url("/api/v1/auth/login"), headers=headers,
                            json={"username": username, "password": password}) as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


def _add_boss(api: Api) -> None:
    """An admin whose hash has production cost (12 rounds), so bcrypt is as slow as in the field."""
    with session_scope(api.engine) as session:
        accounts.create_user(session, "boss", BOSS_PASSWORD, "admin", rounds=DEFAULT_ROUNDS)


async def test_concurrent_bad_logins_reach_bcrypt_at_most_the_limit_and_do_not_starve_call_setup(api: Api) -> None:
    _add_boss(api)
    loop = asyncio.get_running_loop()
    checked = asyncio.Event()

    async def guess(session: aiohttp.ClientSession, i: int) -> tuple[int, dict[str, Any]]:
        status, body = await _login(session, api, "boss", f"guess {i}")
        if status == 401:
            checked.set()
        return status, body

    async with client_from("127.0.0.2") as attacker:
        burst_task = asyncio.ensure_future(asyncio.gather(*(guess(attacker, i) for i in range(300))))
        # One password check has finished: by now the whole burst is in the server, hashing or refused.
        await asyncio.wait_for(checked.wait(), 120)
        # What call setup does (calls.create_call, resolve_agent): a short job on the default executor.
        submitted = time.monotonic()
        await loop.run_in_executor(None, time.monotonic)
        probe_s = time.monotonic() - submitted
        probe_done_before_burst = not burst_task.done()
        results = await burst_task
    statuses = Counter(status for status, _ in results)
    # Every 401 is one password check that ran; everything else was refused before bcrypt.
    assert 1 <= statuses[401] <= 5, statuses
    assert statuses[401] + statuses[429] == 300, statuses
    assert all(body["error"]["code"] in ("invalid_credentials", "rate_limited", "login_busy")
               for _, body in results)
    # A generous bound: with bcrypt on the default executor this job waited behind the whole burst (tens of s).
    assert probe_s < 1.0, probe_s
    assert probe_done_before_burst
    # The attacker's burst from 127.0.0.2 does not lock the real admin out from another address.
    async with client_from("127.0.0.3") as admin:
        status, body = await _login(admin, api, "boss", BOSS_PASSWORD)
    assert status == 200, body


async def test_a_distributed_burst_beyond_the_bcrypt_queue_is_refused_at_once(api: Api) -> None:
    """60 addresses, one guess each: no per-address budget is spent, so only the pool's bound stops them."""
    capacity = api.settings.password_hash_threads + api.settings.password_hash_queue

    async def one(n: int) -> tuple[int, dict[str, Any]]:
        async with client_from(f"127.0.1.{n}") as bot:
            return await _login(bot, api, f"ghost{n}", "guess")

    results = await asyncio.gather(*(one(n) for n in range(1, 61)))
    statuses = Counter(status for status, _ in results)
    assert statuses[401] + statuses[429] == 60, statuses
    assert 1 <= statuses[401] <= capacity + 5, statuses  # a few may finish and free places during the burst
    busy = [body for status, body in results if status == 429]
    assert busy and all(body["error"]["code"] == "login_busy" for body in busy)


async def test_many_attacker_addresses_cannot_lock_out_an_admin_from_a_known_address(
        tmp_path: Path, sqlite_engine: Engine) -> None:
    limiter = LoginLimiter(per_pair=2, per_ip=50, per_user=6, window_s=600)
    api = await start_api(offline_settings(tmp_path / "data"), sqlite_engine, offline_asterisk=True,
                          login_limiter=limiter)
    try:
        async with client_from("127.0.0.5") as home:
            assert (await _login(home, api, "viewer", PASSWORD))[0] == 200  # the admin's usual address
        for n in range(10, 16):  # a distributed guesser: 6 addresses x 2 tries spend the user's ceiling
            async with client_from(f"127.0.0.{n}") as bot:
                for i in range(3):
                    await _login(bot, api, "viewer", f"guess {i}")
        async with client_from("127.0.0.20") as stranger:
            status, body = await _login(stranger, api, "viewer", PASSWORD)
        assert (status, body["error"]["code"]) == (429, "rate_limited")  # the ceiling holds for new addresses
        async with client_from("127.0.0.5") as home:
            status, body = await _login(home, api, "viewer", PASSWORD)
        assert status == 200, body  # ... but not for the address the user signed in from before
    finally:
        await api.client.close()


async def test_password_change_checks_are_limited(api: Api) -> None:
    fresh = await api.login("designer")
    headers = {"Authorization": f"Bearer {fresh['access_token']}"}

    async def attempt(i: int) -> int:
        response = await api.client.post("/api/v1/auth/password", headers=headers,
                                         json={"current_password": f"guess {i}", "new_password": "whatever123"})
        body = await response.json()
        assert body["error"]["code"] in ("invalid_credentials", "rate_limited", "login_busy"), body
        return response.status

    statuses = Counter(await asyncio.gather(*(attempt(i) for i in range(40))))
    assert 1 <= statuses[401] <= 5 and statuses[401] + statuses[429] == 40, statuses
    # The right password is refused too while the budget is spent (it is a guessing oracle otherwise) ...
    response = await api.client.post("/api/v1/auth/password", headers=headers,
                                     json={"current_password": PASSWORD, "new_password": "whatever123"})
    assert response.status == 429


async def test_forwarded_for_is_honoured_only_from_configured_proxies(
        tmp_path: Path, sqlite_engine: Engine, new_engine: Any) -> None:
    proxied = await start_api(offline_settings(tmp_path / "p", api_trusted_proxies="127.0.0.1"), sqlite_engine,
                              offline_asterisk=True)
    try:
        for i in range(5):
            response = await proxied.client.post("/api/v1/auth/login", headers={"X-Forwarded-For": "203.0.113.7"},
                                                 json={"username": "viewer", "password": f"bad {i}"})
            assert response.status == 401
        response = await proxied.client.post("/api/v1/auth/login", headers={"X-Forwarded-For": "203.0.113.7"},
                                             json={"username": "viewer", "password": PASSWORD})
        assert response.status == 429
        # A different client behind the same proxy is not blocked; a forged left-most entry is not believed.
        response = await proxied.client.post(
            "/api/v1/auth/login", headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.2"},
            json={"username": "viewer", "password": PASSWORD})
        assert response.status == 200
    finally:
        await proxied.client.close()
    direct = await start_api(offline_settings(tmp_path / "d"), new_engine(), offline_asterisk=True)
    try:
        # No proxy configured: the header is the attacker's own text and changes nothing.
        statuses: Counter[int] = Counter()
        for i in range(25):
            response = await direct.client.post("/api/v1/auth/login", headers={"X-Forwarded-For": f"10.0.0.{i}"},
                                                json={"username": f"ghost{i}", "password": "bad"})
            statuses[response.status] += 1
        assert statuses == {401: 20, 429: 5}, statuses
    finally:
        await direct.client.close()


def test_limiter_reserves_before_the_check_and_releases_on_success() -> None:
    now = [1000.0]
    limiter = LoginLimiter(per_pair=2, per_ip=100, per_user=50, window_s=60, clock=lambda: now[0])
    first = limiter.reserve("1.2.3.4", "bob")
    second = limiter.reserve("1.2.3.4", "Bob")  # usernames are case-insensitive for counting
    with pytest.raises(RateLimited) as raised:  # both in flight: a third is refused before any hashing
        limiter.reserve("1.2.3.4", "bob")
    assert 59 <= raised.value.retry_after <= 60
    limiter.reserve("5.6.7.8", "bob").failed()  # another address has its own pair budget
    first.failed()
    second.succeeded()  # a success clears the pair and marks the address as known for this user
    limiter.reserve("1.2.3.4", "bob").failed()
    now[0] += 61
    limiter.reserve("1.2.3.4", "bob")


async def test_the_bcrypt_pool_refuses_beyond_its_queue_at_once() -> None:
    import threading

    from admin_api.passwords import PasswordWorker

    worker = PasswordWorker(threads=1, queue=2)
    gate = threading.Event()
    try:
        held = [asyncio.ensure_future(worker.run(gate.wait)) for _ in range(3)]  # 1 running + 2 waiting
        await asyncio.sleep(0)
        with pytest.raises(RateLimited) as raised:
            await worker.run(lambda: True)
        assert raised.value.code == "login_busy"
        # A request that gives up does not free its place while its job still runs in the thread.
        held[0].cancel()
        await asyncio.gather(held[0], return_exceptions=True)
        with pytest.raises(RateLimited):
            await worker.run(lambda: True)
        gate.set()
        await asyncio.gather(*held[1:])
        assert await worker.run(lambda: 42) == 42
    finally:
        gate.set()
        worker.close()
