"""Fuzz tests of everything that turns caller-controlled text into values on the call path.

Stasis arguments (a dialled number reaches them through ``${EXTEN}``), channel names and caller IDs from ARI
events, and DTMF digits.  Pure parser level, >= 1000 generated inputs each: no crash, bounded results, and no
injected key can change a call's agent or direction unless the channel carries Eva's origin proof.
"""

from __future__ import annotations

import itertools
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.ari.events import MAX_STASIS_ARGS, ChannelInfo, parse_event
from voicebot.ari.origin import is_eva_origin, origin_token
from voicebot.pipeline.dtmf import KEYS, DtmfCollector
from voicebot.voiceapp import call_identity, claims_origin

# Text a SIP request URI user or caller ID can carry, biased towards the characters that matter here.
ATTACK = st.text(alphabet=st.sampled_from([*list(string.printable), ",", "=", "\x00", "é", "\u202e"]),
                 max_size=300)
KEYWORDS = st.sampled_from(["did", "agent", "direction", "DIRECTION", " agent ", "did ", "route"])
PAIRS = st.builds(lambda k, v: f"{k}={v}", KEYWORDS, st.sampled_from(["outbound", "demo", "+15551234567", ""]))
ARGS = st.lists(st.one_of(ATTACK, PAIRS), max_size=40)


def _channel(name: str, caller: str, exten: str) -> ChannelInfo:
    return ChannelInfo.parse({"id": "1700000000.1", "name": name, "state": "Ring",
                              "caller": {"number": caller, "name": ""},
                              "dialplan": {"exten": exten, "context": "from-trunk"}})


@settings(max_examples=1000, deadline=None)
@given(args=ARGS)
def test_stasis_args_never_crash_are_bounded_and_the_first_key_wins(args: list[str]) -> None:
    event = parse_event({"type": "StasisStart", "args": args})
    parsed = event.stasis_args()
    assert len(parsed) <= MAX_STASIS_ARGS
    assert all(len(k) <= 256 and len(v) <= 256 for k, v in parsed.items())
    for key, value in parsed.items():
        first = next(a for a in args[:MAX_STASIS_ARGS] if a[:256].partition("=")[0].strip().lower() == key)
        assert value == (first[:256].partition("=")[2].strip() if "=" in first[:256] else "")


@settings(max_examples=1000, deadline=None)
@given(exten=ATTACK, caller=ATTACK, name=ATTACK, extra=ARGS)
def test_injected_arguments_never_change_agent_or_direction_without_the_origin_proof(
        exten: str, caller: str, name: str, extra: list[str]) -> None:
    # What the unfiltered dialplan `Stasis(eva,did=${EXTEN})` would pass for this request URI, plus more.
    args = parse_event({"type": "StasisStart", "args": [f"did={exten}", *exten.split(","), *extra]}).stasis_args()
    channel = _channel(f"PJSIP/{name}-0000001a", caller, exten)
    identity = call_identity(args, channel, originated=False)
    assert identity.direction == "inbound"
    assert identity.agent_name == ""
    assert identity.caller == caller[:64]  # the channel's caller ID, never a number from the arguments
    assert len(identity.did) <= 64
    # With the proof (Eva's own originate) the arguments are Eva's: they count.
    trusted = call_identity({"did": "+15550001", "agent": "demo", "direction": "outbound"}, channel, originated=True)
    assert (trusted.direction, trusted.agent_name, trusted.caller) == ("outbound", "demo", "+15550001")
    assert claims_origin({"direction": "outbound"}) and claims_origin({"agent": ""}) and not claims_origin({})


@settings(max_examples=1000, deadline=None)
@given(name=ATTACK)
def test_endpoint_comes_from_the_channel_name_only(name: str) -> None:
    endpoint = ChannelInfo.parse({"name": name}).endpoint
    assert endpoint == "" or (name.startswith("PJSIP/") and endpoint in name)
    assert ChannelInfo.parse({"name": "PJSIP/trunk-acme-0000002a"}).endpoint == "trunk-acme"
    assert ChannelInfo.parse({"name": "Local/100@eva-inbound-00000001;1"}).endpoint == ""


@settings(max_examples=1000, deadline=None)
@given(channel_id=ATTACK, token=ATTACK)
def test_origin_proof_cannot_be_guessed_or_moved_to_another_channel(channel_id: str, token: str) -> None:
    secret = "s3cret-ari-password"
    assert not is_eva_origin(secret, channel_id, token) or token == origin_token(secret, channel_id)
    if channel_id:
        assert is_eva_origin(secret, channel_id, origin_token(secret, channel_id))
        assert not is_eva_origin(secret, channel_id + "x", origin_token(secret, channel_id))
        assert not is_eva_origin("", channel_id, origin_token("", channel_id))


@settings(max_examples=1000, deadline=None)
@given(presses=st.lists(st.tuples(st.one_of(st.sampled_from(sorted(KEYS)), ATTACK),
                                  st.floats(min_value=0, max_value=0.5)), max_size=200))
def test_dtmf_flood_is_bounded_in_turns_and_keys_and_loses_nothing_accepted(
        presses: list[tuple[str, float]]) -> None:
    collector = DtmfCollector(terminator="#", timeout_s=2.0, min_interval_s=1.0, max_digits=64)
    now, due, turns, accepted = 0.0, None, [], []

    def run(step_turn: str | None, flush_at: float | None) -> None:
        nonlocal due
        if step_turn:
            turns.append((now, step_turn))
        due = flush_at

    for digit, gap in presses:
        now += gap
        while due is not None and due <= now:  # the timer the session would have armed
            at, now_saved = due, now
            now = at
            step = collector.flush(at)
            run(step.turn, step.flush_at)
            now = now_saved
        step = collector.press(digit, now)
        if not step.refused:
            accepted.append(digit)
        run(step.turn, step.flush_at)
    while due is not None:
        now = max(now, due)
        step = collector.flush(now)
        run(step.turn, step.flush_at)
    # Never more than one turn per second, however fast the keys come.
    times = [t for t, _ in turns]
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
    # Only DTMF keys, never more than the cap per turn, and every accepted key is in some turn.
    assert all(set(keys) <= KEYS and len(keys) <= 64 for _, keys in turns)
    assert "".join(k for _, keys in turns for k in keys).replace("#", "") == "".join(accepted).replace("#", "")
