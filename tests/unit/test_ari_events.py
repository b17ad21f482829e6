"""ARI event parsing against the events a real Asterisk 22 sent during a call (captured in tests/data)."""

from __future__ import annotations

import json
from pathlib import Path

from voicebot.ari.events import parse_event

CAPTURED = Path(__file__).parent.parent / "data" / "captured" / "ari_events_call.json"


def _events() -> list[dict[str, object]]:
    return [e for e in json.loads(CAPTURED.read_text()) if "type" in e]


def test_stasis_start_of_a_caller_carries_dialplan_args_and_caller() -> None:
    starts = [parse_event(e) for e in _events() if e["type"] == "StasisStart"]
    caller = next(e for e in starts if e.channel and not e.channel.is_media_channel)
    assert caller.channel is not None
    assert caller.channel.name.startswith("PJSIP/carrier-")
    assert caller.stasis_args() == {"did": "100", "agent": "demo"}
    assert caller.channel.caller_number == "caller"
    assert caller.channel.exten == "100" and caller.channel.context == "from-trunk"


def test_media_channels_are_recognised() -> None:
    starts = [parse_event(e) for e in _events() if e["type"] == "StasisStart"]
    media = [e for e in starts if e.channel and e.channel.is_media_channel]
    assert len(media) == 1 and media[0].channel is not None
    assert media[0].channel.name.startswith("UnicastRTP/")


def test_dtmf_and_hangup_events() -> None:
    parsed = [parse_event(e) for e in _events()]
    dtmf = [e for e in parsed if e.type == "ChannelDtmfReceived"]
    assert [e.digit for e in dtmf] == ["7"] and dtmf[0].duration_ms > 0
    hangups = [e for e in parsed if e.type == "ChannelHangupRequest"]
    assert hangups and all(e.channel_id for e in hangups)
    assert any(e.type == "ChannelDestroyed" and e.cause_txt for e in parsed)


def test_every_captured_event_parses() -> None:
    for raw in _events():
        event = parse_event(raw)
        assert event.type == raw["type"]


def test_external_media_reply_names_the_rtp_address() -> None:
    reply = next(e["_rest_reply_externalMedia"] for e in json.loads(CAPTURED.read_text())
                 if "_rest_reply_externalMedia" in e)
    variables = reply["channelvars"]
    assert variables["UNICASTRTP_LOCAL_ADDRESS"] == "127.0.0.1"
    assert int(variables["UNICASTRTP_LOCAL_PORT"]) > 0


def test_stasis_args_first_key_wins_so_appended_arguments_cannot_override_the_dialplan() -> None:
    # `Stasis(eva,did=${EXTEN})` with EXTEN = "1,did=555,agent=x" arrives as these arguments.
    event = parse_event({"type": "StasisStart", "args": ["did=1", "did=555", "AGENT=x", "direction=outbound"]})
    assert event.stasis_args() == {"did": "1", "agent": "x", "direction": "outbound"}


def test_the_endpoint_is_read_from_the_channel_name() -> None:
    starts = [parse_event(e) for e in _events() if e["type"] == "StasisStart"]
    caller = next(e for e in starts if e.channel and not e.channel.is_media_channel)
    assert caller.channel is not None and caller.channel.endpoint == "carrier"
    media = next(e for e in starts if e.channel and e.channel.is_media_channel)
    assert media.channel is not None and media.channel.endpoint == ""


def test_a_channel_inside_the_workers_gosub_is_shown_with_the_number_it_dialled() -> None:
    from voicebot.ari.events import ChannelInfo

    inside = ChannelInfo.parse({"id": "c1", "name": "PJSIP/carrier-00000001", "dialplan": {
        "context": "eva-stasis", "exten": "s", "priority": 8, "app_name": "Stasis", "app_data": "eva-2,did=100"}})
    assert inside.exten == "100"
    still_choosing = ChannelInfo.parse({"id": "c2", "dialplan": {"context": "eva-stasis", "exten": "s",
                                                                 "app_name": "Set", "app_data": "x"}})
    assert still_choosing.exten == "s"
    elsewhere = ChannelInfo.parse({"id": "c3", "dialplan": {"context": "eva-inbound", "exten": "200",
                                                            "app_name": "Stasis", "app_data": "eva,did=999"}})
    assert elsewhere.exten == "200"  # only Eva's own Gosub is read this way
