"""The small parsers of attacker-controlled credentials and headers, fuzzed: X-Forwarded-For, stored password
hashes, API keys.  Pure functions: no crash, bounded work, and nothing the client wrote is believed unless a
trusted proxy vouched for it."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from admin_api.auth import MAX_FORWARDED_HOPS, client_address, parse_networks
from admin_api.passwords import hash_password, parse_api_key, verify_password

TRUSTED = parse_networks("127.0.0.1, 10.0.0.0/8, ::1")
_ipv4 = st.ip_addresses(v=4).map(str)
_hop = st.one_of(_ipv4, st.ip_addresses(v=6).map(str), st.sampled_from(["10.1.2.3", "127.0.0.1", "unknown", ""]),
                 st.text(max_size=20))
_header = st.lists(_hop, max_size=40).map(", ".join)


@settings(max_examples=1000, deadline=None, database=None)
@given(peer=st.one_of(st.none(), _hop), headers=st.lists(_header, max_size=3))
def test_forwarded_for_parsing_never_believes_the_client(peer: str | None, headers: list[str]) -> None:
    client = client_address(peer, headers, TRUSTED)
    hops = [hop.strip() for value in headers for hop in value.split(",")]
    if not peer:
        assert client == "unknown"
        return
    try:
        peer_trusted = any(ip_address(peer) in network for network in TRUSTED)
    except ValueError:
        peer_trusted = False
    if not peer_trusted:
        assert client == peer  # a direct client's header changes nothing
        return
    assert client == peer or client in hops[-MAX_FORWARDED_HOPS:]
    if client != peer:
        ip_address(client)  # only a real address is ever taken from the header
        # Everything right of the chosen hop was added by trusted proxies.
        right = hops[len(hops) - 1 - hops[::-1].index(client) + 1:]
        assert all(any(ip_address(h) in n for n in TRUSTED) for h in right)


def test_forwarded_for_examples() -> None:
    assert client_address("127.0.0.1", ["203.0.113.7"], TRUSTED) == "203.0.113.7"
    assert client_address("127.0.0.1", ["6.6.6.6, 203.0.113.7"], TRUSTED) == "203.0.113.7"
    assert client_address("127.0.0.1", ["203.0.113.7, 10.0.0.5"], TRUSTED) == "203.0.113.7"
    assert client_address("198.51.100.1", ["203.0.113.7"], TRUSTED) == "198.51.100.1"
    assert client_address("127.0.0.1", ["not-an-ip"], TRUSTED) == "127.0.0.1"
    assert client_address("127.0.0.1", ["203.0.113.7"], ()) == "127.0.0.1"


_HASH = hash_password("a real password", rounds=4)


@settings(max_examples=1000, deadline=None, database=None)
@given(password=st.text(max_size=100),
       stored=st.one_of(st.text(max_size=80), st.just(_HASH),
                        st.text(max_size=40).map(lambda t: "$eva-hs256$" + t),
                        st.text(max_size=40).map(lambda t: "$2b$04$" + t)))
def test_password_verification_survives_any_stored_hash(password: str, stored: str) -> None:
    result = verify_password(password, stored)
    assert isinstance(result, bool)
    if stored != _HASH:
        assert result is False or stored.startswith(("$2", "$eva-hs256$"))


@settings(max_examples=1000, deadline=None, database=None)
@given(key=st.one_of(st.text(max_size=250), st.text(max_size=60).map(lambda t: "eva_" + t)))
def test_api_key_parsing_is_total(key: str) -> None:
    prefix = parse_api_key(key)
    assert prefix is None or (len(prefix) == 8 and key.startswith(f"eva_{prefix}_") and len(key) <= 200)
