"""Fuzzing trunk fields through the request schema and the pjsip renderer.

Whatever the schema and ``check_trunk`` accept, the rendered ``pjsip_trunks.conf`` must hold exactly the
sections and keys we meant, no ``#include``/``#exec`` and no extra line, and Asterisk must read back each value
exactly as given (nothing accepted is lost).  Asterisk's reading is modelled with the same comment rules the
dialplan fuzz test checks against an independent transliteration of main/config.c.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from admin_api.dialplans import scan_comments
from admin_api.schemas import TrunkCreate
from admin_api.trunks import TCP_TRANSPORT, check_trunk, endpoint_name, rejection_reasons, render_trunks
from models import SipTrunk
from voicebot.errors import InvalidInput

SPACE = " \t\n\v\f\r"
KEYS = {
    "type", "transport", "context", "disallow", "allow", "direct_media", "rtp_symmetric", "force_rport",
    "rewrite_contact", "dtmf_mode", "rtp_timeout", "aors", "outbound_auth", "from_user", "from_domain",
    "media_address", "bind_rtp_to_media_address", "contact", "qualify_frequency", "auth_type", "username",
    "password", "endpoint", "match", "server_uri", "client_uri", "contact_user", "retry_interval",
    "forbidden_retry_interval", "expiration", "line", "protocol", "bind",
}
NASTY = st.text(alphabet=st.sampled_from(list("ab1.-_;\\#[]=> \n\r\t\x00\u2028'\"$,&+()!~*:@/%")), max_size=24)


HOST = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\.[a-z0-9]{1,5}){0,3}\Z")
USER = st.from_regex(r"\A[A-Za-z0-9_.!~*'()&=+$,-]{0,12}\Z")
PASSWORD = st.text(alphabet=st.one_of(st.sampled_from(list(" ;\\-#[]=>'\"$&%")),
                                      st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))), max_size=30)
VALID = st.fixed_dictionaries({
    "name": st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,10}\Z"),
    "host": HOST,
    "port": st.integers(min_value=1, max_value=65535),
    "transport": st.sampled_from(["udp", "tcp"]),
    "username": USER,
    "password": PASSWORD,
    "registration": st.booleans(),
    "codecs": st.lists(st.sampled_from(["ulaw", "alaw", "opus", "g722"]), min_size=1, max_size=3),
    "from_user": USER,
    "from_domain": st.one_of(st.just(""), HOST),
})
HOSTILE = {
    "name": NASTY, "host": NASTY, "port": st.integers(min_value=-1, max_value=70000),
    "transport": st.sampled_from(["tls", "udp\n", "tcp;"]), "username": NASTY, "password": NASTY,
    "codecs": st.lists(st.sampled_from(["ulaw", "ulaw\n[x]", "all"]), max_size=3), "from_user": NASTY,
    "from_domain": NASTY,
}


@st.composite
def trunks(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid trunks (so the renderer is exercised), each with at most one hostile field."""
    data = draw(VALID)
    key = draw(st.sampled_from([None, None, *HOSTILE]))
    if key is not None:
        data[key] = draw(HOSTILE[key])
    return data


def _read_back(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Sections in order, each with its (key, value) pairs, as Asterisk's config parser reads them."""
    scan = scan_comments(text)
    assert not scan.problems, scan.problems
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for visible in scan.lines:
        line = (visible or "").strip(SPACE)
        if not line:
            continue
        assert not line.startswith("#"), line
        if line.startswith("["):
            assert line.endswith("]") and line.count("]") == 1, line
            sections.append((line[1:-1], []))
            continue
        key, sep, value = line.partition("=")
        assert sep and sections, line
        sections[-1][1].append((key.strip(SPACE), value.strip(SPACE)))
    return sections


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trunks())
def test_fuzz_trunk_fields_cannot_inject_config(data: dict[str, Any]) -> None:
    try:
        body = TrunkCreate.model_validate(data)
    except ValidationError:
        return
    trunk = SipTrunk(**body.model_dump())
    try:
        check_trunk(trunk)
    except InvalidInput:
        return
    text = render_trunks([trunk], bind_host="127.0.0.1", sip_port=5060)
    event("rendered, with a password" if trunk.password and trunk.username else "rendered")
    name = endpoint_name(trunk.name)
    sections = _read_back(text)
    expected = {name} | ({TCP_TRANSPORT} if trunk.transport == "tcp" else set())
    assert {section for section, _pairs in sections} == expected
    values: dict[str, list[str]] = {}
    for _section, pairs in sections:
        for key, value in pairs:
            assert key in KEYS, key
            values.setdefault(key, []).append(value)
    # Nothing accepted is lost: Asterisk reads exactly the values we were given.
    if trunk.username and trunk.password:
        assert values["password"] == [trunk.password]
        assert trunk.username in values["username"]
    else:
        assert "password" not in values
    assert values["match"] == [trunk.host]
    if trunk.from_user:
        assert values["from_user"] == [trunk.from_user]
    if trunk.from_domain:
        assert values["from_domain"] == [trunk.from_domain]
    assert values["allow"] == [",".join(trunk.codecs)]


def test_a_password_with_surrounding_spaces_is_refused() -> None:
    """Asterisk strips a value's surrounding spaces: the provider would get another password."""
    for password in (" secret", "secret ", " "):
        try:
            check_trunk(SipTrunk(name="acme", host="127.0.0.2", username="u", password=password))
        except InvalidInput as exc:
            assert exc.field == "password"
        else:
            raise AssertionError(f"{password!r} accepted")
    check_trunk(SipTrunk(name="acme", host="127.0.0.2", username="u", password="in side;--\\;x"))


def test_only_configuration_errors_naming_the_trunk_reject_it() -> None:
    trunk = SipTrunk(name="acme", host="127.0.0.12")
    logged = [
        # About another trunk whose host merely contains this one's (its DNS broke):
        ("ERROR", "netsock2.c", 'getaddrinfo("127.0.0.12.invalid", "(null)", ...): Name or service not known'),
        ("ERROR", "res_pjsip_endpoint_identifier_ip.c",
         "Identify 'trunk-other' failed when adding resolution results of '127.0.0.12.invalid'"),
        # A call during the reload, naming the endpoint at call time:
        ("ERROR", "chan_pjsip.c", "Unable to create PJSIP channel - endpoint '127.0.0.12' was not found"),
        ("ERROR", "chan_pjsip.c", "Unable to create PJSIP channel - endpoint 'trunk-acme' was not found"),
        # A longer name that starts with ours:
        ("ERROR", "res_sorcery_config.c", "Could not create an object of type 'aor' with id 'trunk-acme2'"),
        ("WARNING", "res_sorcery_config.c", "Could not create an object of type 'aor' with id 'trunk-acme'"),
    ]
    assert rejection_reasons(trunk, logged) == []
    rejected = ("ERROR", "res_sorcery_config.c",
                "Could not create an object of type 'identify' with id 'trunk-acme' from configuration file "
                "'pjsip.conf'")
    assert rejection_reasons(trunk, [*logged, rejected]) == [rejected[2]]
