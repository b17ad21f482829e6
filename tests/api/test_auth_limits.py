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
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from admin_api import accounts
from admin_api.auth import LoginLimiter, forwarded_hop
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


@pytest.mark.long
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


# ---------------------------------------------------------------- eviction, IPv6 and the stored known addresses


def _v6(n: int, host: int = 1) -> str:
    """An address in the n-th /64 of 2001:db8:: (each /64 is one client for the limiter)."""
    return f"2001:db8:0:{n:x}::{host:x}"


def test_a_flood_of_junk_usernames_does_not_reset_the_admins_ceiling() -> None:
    """The review's attack, at the limiter: spend admin's ceiling, flood 10,000 junk names, guess 50 more."""
    now = [1000.0]
    limiter = LoginLimiter(clock=lambda: now[0])  # production budgets and bound (max_keys=10,000)
    for n in range(50):
        limiter.reserve(_v6(n), "admin").failed()
    with pytest.raises(RateLimited):
        limiter.reserve(_v6(50), "admin")
    crowded = 0
    for i in range(10_000):  # 500 addresses x 20 names: within every per-address budget
        try:
            limiter.reserve(f"10.{i // 20 // 256}.{i // 20 % 256}.1", f"junk{i}").failed()
        except RateLimited as exc:
            assert exc.code == "login_crowded"  # the table is full of live keys: new ones wait, none is dropped
            crowded += 1
        now[0] += 0.001
    allowed = 0
    for n in range(100, 150):
        try:
            limiter.reserve(_v6(n), "admin").failed()
            allowed += 1
        except RateLimited:
            pass
    assert allowed == 0, f"{allowed} guesses against admin allowed after the flood"
    assert crowded == 50  # the 50 live (admin, address) pairs kept 50 of the 10,000 places


def test_a_full_table_refuses_new_keys_rather_than_evicting_live_ones() -> None:
    now = [1000.0]
    limiter = LoginLimiter(per_user=3, max_keys=100, window_s=60, clock=lambda: now[0])
    for n in range(3):
        limiter.reserve(f"192.0.2.{n}", "admin").failed()
    limiter.reserve("198.51.100.1", "admin-home").succeeded()
    crowded = 0
    for i in range(300):  # failed junk attempts stay counted, so the tables fill with live keys
        try:
            limiter.reserve(f"10.0.{i // 20}.1", f"junk{i}").failed()
        except RateLimited as exc:
            assert exc.code == "login_crowded"
            crowded += 1
    assert crowded > 0
    assert all(len(table) <= 100 for table in (limiter._pairs, limiter._ips, limiter._users))
    with pytest.raises(RateLimited) as raised:  # admin's ceiling is still spent (its key was not dropped)
        limiter.reserve("203.0.113.9", "admin")
    assert raised.value.code in ("rate_limited", "login_crowded")
    assert "admin" in limiter._users
    limiter.reserve("198.51.100.1", "admin-home").succeeded()  # a known address always gets in
    now[0] += 61  # once the window has passed, expired keys make room again
    limiter.reserve("203.0.113.9", "someone-new").failed()


def test_ipv6_clients_are_counted_by_their_slash_64() -> None:
    limiter = LoginLimiter(per_pair=100, per_ip=20, per_user=1000, window_s=60, clock=lambda: 0.0)
    for host in range(1, 21):
        limiter.reserve(_v6(7, host), f"user{host}").failed()
    with pytest.raises(RateLimited):  # another address in the same /64 is the same client
        limiter.reserve(_v6(7, 0xFFFF), "user99")
    limiter.reserve(_v6(8), "user99").failed()  # the next /64 is another client
    limiter.reserve("::ffff:192.0.2.1", "user1").failed()
    with pytest.raises(RateLimited):  # an IPv4-mapped address counts as the IPv4 address
        for _ in range(20):
            limiter.reserve("192.0.2.1", "user1").failed()


@pytest.mark.parametrize(("hop", "address"), [
    ("203.0.113.7", "203.0.113.7"),
    ("203.0.113.7:4711", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:4711", "2001:db8::1"),
    (" [2001:DB8::1]:443 ", "2001:db8::1"),
    ("203.0.113.7:", None),
    ("203.0.113.7:99x", None),
    ("[2001:db8::1", None),
    ("[2001:db8::1]x", None),
    ("[2001:db8::1]:", None),
    ("unknown", None),
    ("fe80::1%eth0", None),
])
def test_forwarded_hops_may_carry_a_port(hop: str, address: str | None) -> None:
    from admin_api.auth import client_address, forwarded_hop, parse_networks

    assert forwarded_hop(hop) == address
    trusted = parse_networks("127.0.0.1")
    assert client_address("127.0.0.1", [f"198.51.100.2, {hop}"], trusted) == (address or "127.0.0.1")


async def _login_as(api: Api, client_ip: str, username: str, password: str) -> tuple[int, dict[str, Any]]:
    """A login that the trusted proxy at 127.0.0.1 forwards for ``client_ip`` (written as ``[v6]:port``)."""
    hop = f"[{client_ip}]:{40000 + len(client_ip)}" if ":" in client_ip else f"{client_ip}:4711"
    response = await api.client.post("/api/v1/auth/login", headers={"X-Forwarded-For": hop},
                                     json={"username": username, "password": password})
    body: dict[str, Any] = await response.json()
    return response.status, body


@pytest.mark.long
async def test_junk_username_flood_over_http_neither_resets_the_ceiling_nor_drops_known_addresses(
        tmp_path: Path, sqlite_engine: Engine) -> None:
    """The review's attack through the real server behind a proxy, with IPv6 clients, then a restart."""
    from aiohttp.test_utils import TestClient, TestServer

    from admin_api.app import create_app

    settings = offline_settings(tmp_path / "data", api_trusted_proxies="127.0.0.1")
    limiter = LoginLimiter(per_pair=5, per_ip=20, per_user=10, window_s=600, max_keys=60)
    api = await start_api(settings, sqlite_engine, offline_asterisk=True, login_limiter=limiter)
    home = "2001:db8:aaaa:1::5"
    try:
        assert (await _login_as(api, home, "admin", PASSWORD))[0] == 200  # the admin's usual address
        statuses = Counter([(await _login_as(api, _v6(n, 0x100 + n), "admin", "guess"))[0] for n in range(10)])
        assert statuses == {401: 10}, statuses
        status, body = await _login_as(api, _v6(10), "admin", "guess")
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        # Another address of an attacker's /64 is no new budget.
        for host in range(2, 22):
            await _login_as(api, _v6(0x20, host), f"ghost{host}", "guess")
        status, body = await _login_as(api, _v6(0x20, 0x999), "ghost-x", "guess")
        assert status == 429, body
        # The flood: many junk usernames from many /64s.
        codes: Counter[str] = Counter()
        for i in range(200):
            status, body = await _login_as(api, _v6(0x100 + i // 10), f"junk{i}", "guess")
            codes["ok" if status == 401 else body["error"]["code"]] += 1
        assert codes["login_crowded"] > 0, codes
        for n in range(0x300, 0x310):  # ... and admin's ceiling still holds for every new address
            status, body = await _login_as(api, _v6(n), "admin", "guess")
            assert status == 429, body
        assert (await _login_as(api, home, "admin", PASSWORD))[0] == 200  # the known address still gets in
    finally:
        await api.client.close()
    # A restart: a fresh limiter, the same database; admin's ceiling is spent again by a guesser.
    restarted = LoginLimiter(per_pair=5, per_ip=20, per_user=10, window_s=600, max_keys=60)
    client: TestClient[Any, Any] = TestClient(TestServer(
        create_app(settings, sqlite_engine, offline_asterisk=True, login_limiter=restarted), host="127.0.0.1",
        port=0))
    await client.start_server()
    try:
        again = Api(client=client, settings=settings, engine=sqlite_engine, users=api.users, keys=api.keys)
        for n in range(10):
            await _login_as(again, _v6(0x400 + n), "admin", "guess")
        assert (await _login_as(again, _v6(0x410), "admin", PASSWORD))[0] == 429
        assert (await _login_as(again, home, "admin", PASSWORD))[0] == 200  # remembered across the restart
    finally:
        await client.close()


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(
    st.text(max_size=80),
    st.ip_addresses().map(str),
    st.builds(lambda a, p: f"[{a}]:{p}", st.ip_addresses(v=6), st.integers(0, 99999)),
    st.builds(lambda a, p: f"{a}:{p}", st.ip_addresses(v=4), st.text("0123456789:x", max_size=7)),
), max_size=40))
def test_forwarded_for_parsing_never_fails_and_names_an_address(hops: list[str]) -> None:
    """X-Forwarded-For is the client's text: any header yields an address (or the peer), and a limit key."""
    from ipaddress import ip_address as parse

    from admin_api.auth import client_address, limit_key, parse_networks

    trusted = parse_networks("127.0.0.1, 2001:db8::/32")
    client = client_address("127.0.0.1", [", ".join(hops)], trusted)
    parse(client)
    assert len(limit_key(client)) <= 64
    for hop in hops:
        address = forwarded_hop(hop)
        assert address is None or str(parse(address)) == address


async def test_concurrent_sign_ins_from_a_new_address_all_succeed(api: Api) -> None:
    """The first sign-ins from an address store it as known at the same moment: none may fail on the row."""
    async with client_from("127.0.0.7") as desk:
        results = await asyncio.gather(*(_login(desk, api, "viewer", PASSWORD) for _ in range(5)))
    assert [status for status, _ in results] == [200] * 5, results
