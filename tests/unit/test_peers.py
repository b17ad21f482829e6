"""Workers sharing one Asterisk: which peers are dead, and what a dead one left behind (pure, no sockets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from voicebot.ari.events import stasis_location
from voicebot.calls.peers import PeerTracker, left_behind
from voicebot.config import Settings
from voicebot.errors import ConfigError

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_peer_is_dead_once_its_last_beat_is_older_than_the_grace_and_is_closed_once() -> None:
    tracker = PeerTracker(["w2", "w3"], dead_after_s=15)
    beats = {"eva": at(20), "w2": at(5), "w3": at(19)}
    assert tracker.observe(beats, at(19.9)) == []  # w2 beat 14.9 s ago: a slow loop, not a death
    assert tracker.observe(beats, at(20)) == ["w2"]
    tracker.closed("w2", beats)
    assert tracker.observe(beats, at(30)) == []  # its calls were closed: not again for the same death
    assert tracker.observe({"eva": at(40)}, at(40)) == []  # a worker that never beat here left nothing open


def test_nobody_is_judged_until_this_workers_own_beats_have_gone_through_for_the_whole_grace() -> None:
    tracker = PeerTracker(["w2"], dead_after_s=15)
    # The database was away for a minute: every beat is old, the peer's included; that is no death.
    beats = {"eva": at(60), "w2": at(0)}
    assert tracker.observe(beats, at(60), beating_since=at(60)) == []
    assert tracker.observe(beats, at(74), beating_since=at(60)) == []
    assert tracker.observe(beats, at(75), beating_since=at(60)) == ["w2"]  # still silent 15 s after: dead


def test_a_peer_that_beats_again_and_dies_again_is_closed_again() -> None:
    tracker = PeerTracker(["w2"], dead_after_s=15)
    first = {"w2": at(0)}
    assert tracker.observe(first, at(15)) == ["w2"]
    tracker.closed("w2", first)
    restarted = {"w2": at(30)}
    assert tracker.observe(restarted, at(31)) == []
    assert tracker.observe(restarted, at(45)) == ["w2"]


def _channel(channel_id: str, app_name: str, app_data: str) -> dict[str, Any]:
    return {"id": channel_id, "dialplan": {"context": "eva-stasis", "exten": "s", "app_name": app_name,
                                           "app_data": app_data}}


def test_what_a_dead_worker_left_is_its_channels_in_stasis_and_the_bridges_it_created() -> None:
    channels: list[dict[str, Any]] = [
        _channel("caller-1", "Stasis", "w2,did=100"),
        _channel("media-1", "Stasis", "w2"),
        _channel("caller-2", "Stasis", "eva,did=100"),  # a live worker's call
        _channel("caller-3", "Stasis", "w22,did=100"),  # a name that only starts the same
        _channel("ringing", "AppDial", "(Outgoing Line)"),
        {"id": "no-dialplan"},
    ]
    bridges = [{"id": "b1", "creator": "w2"}, {"id": "b2", "creator": "eva"}, {"id": "b3"}]
    assert left_behind(channels, bridges, "w2") == (["caller-1", "media-1"], ["b1"])
    assert stasis_location(_channel("x", "stasis", " w2 ,did=1")) == ("w2", ["did=1"])
    assert stasis_location(_channel("x", "Dial", "w2")) == ("", [])


def test_the_workers_of_an_asterisk_are_named_safely_and_include_this_one() -> None:
    assert Settings(ari_app="eva").worker_apps == ("eva",)
    assert Settings(ari_app="w2", ari_apps="eva, w2,eva").worker_apps == ("eva", "w2")
    with pytest.raises(ConfigError, match="own EVA_ARI_APP"):
        _ = Settings(ari_app="w3", ari_apps="eva,w2").worker_apps
    for bad in ("eva,w(2)", "eva,a b", "eva," + "x" * 41):
        with pytest.raises(ConfigError) as raised:
            _ = Settings(ari_app="eva", ari_apps=bad).worker_apps
        assert raised.value.field == "ari_apps"
    with pytest.raises(ConfigError):
        _ = Settings(ari_app="ev,a").worker_apps  # it is written into the dialplan too
