"""The trunk tracker (admin_api/trunk_monitor.py) without sockets: AMI events and listings in, states and changes out.

The event dictionaries are shaped as Asterisk 22 sends them (header names and values as on the wire, including its
inconsistent spelling: ``URI`` in ContactStatus, ``Uri`` in ContactList)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from admin_api.trunk_monitor import (
    DISABLED,
    DOWN,
    REGISTERING,
    REJECTED,
    UNKNOWN,
    UP,
    TrunkSpec,
    TrunkTracker,
    endpoint_of_channel,
)

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
ACME = TrunkSpec(trunk_id=1, name="acme", server_uri="sip:192.0.2.10:5060")
REG = TrunkSpec(trunk_id=2, name="reg-co", registers=True, client_uri="sip:eva@192.0.2.20:5060",
                server_uri="sip:192.0.2.20:5060")


def contact_status(aor: str, status: str, rtt: str = "0") -> dict[str, str]:
    return {"Event": "ContactStatus", "Privilege": "system,all", "URI": "sip:192.0.2.10:5060",
            "ContactStatus": status, "AOR": aor, "EndpointName": aor, "RoundtripUsec": rtt}


def endpoint_detail(name: str, *statuses: tuple[str, str]) -> list[dict[str, str]]:
    """What PJSIPShowEndpoint answers: the EndpointDetail, the aor, a ContactStatusDetail per contact."""
    events = [{"Event": "EndpointDetail", "ObjectType": "endpoint", "ObjectName": name, "DeviceState": "Not in use"},
              {"Event": "AorDetail", "ObjectType": "aor", "ObjectName": name, "Contacts": "sip:192.0.2.10:5060"}]
    for status, rtt in statuses:
        events.append({"Event": "ContactStatusDetail", "AOR": name, "URI": "sip:192.0.2.10:5060", "Status": status,
                       "RoundtripUsec": rtt, "EndpointName": name, "QualifyFrequency": "60"})
    events.append({"Event": "EndpointDetailComplete", "EventList": "Complete", "ListItems": str(len(events))})
    return events


def channel(name: str, uniqueid: str) -> dict[str, str]:
    return {"Event": "CoreShowChannel", "Channel": name, "Uniqueid": uniqueid, "ChannelStateDesc": "Up",
            "CallerIDNum": "+15550100", "Duration": "00:00:07"}


def registration(name: str, status: str) -> dict[str, str]:
    return {"Event": "OutboundRegistrationDetail", "ObjectType": "registration", "ObjectName": name,
            "ServerUri": "sip:192.0.2.20:5060", "ClientUri": "sip:eva@192.0.2.20:5060", "Status": status,
            "NextReg": "3545"}


def tracker(*specs: TrunkSpec) -> TrunkTracker:
    t = TrunkTracker(started=T0 - timedelta(hours=1))
    t.configure(specs)
    return t


def states(changes: list[Any]) -> list[tuple[str, str, str]]:
    return [(c.trunk_name, c.previous, c.state) for c in changes]


def test_qualify_events_make_a_trunk_up_then_down_and_each_change_is_reported_once() -> None:
    t = tracker(ACME)
    assert states(t.feed(contact_status("trunk-acme", "Reachable", "1234"), T0)) == [("acme", "", UP)]
    snap = t.snapshot(1, T0)
    assert snap is not None and (snap.state, snap.since, snap.rtt_ms) == (UP, T0, 1.23)
    assert "1.23 ms" in snap.detail
    # The same answer again (every qualify) is no change.
    assert t.feed(contact_status("trunk-acme", "Reachable", "999"), T0 + timedelta(seconds=60)) == []
    later = T0 + timedelta(seconds=120)
    [change] = t.feed(contact_status("trunk-acme", "Unreachable"), later)
    assert (change.previous, change.state, change.at, change.trunk_id) == (UP, DOWN, later, 1)
    assert "OPTIONS" in change.detail
    assert t.snapshot(1, later).since == later  # type: ignore[union-attr]


def test_peer_status_is_read_as_the_endpoints_qualify() -> None:
    t = tracker(ACME)
    event = {"Event": "PeerStatus", "ChannelType": "PJSIP", "Peer": "PJSIP/trunk-acme", "PeerStatus": "Unreachable"}
    assert states(t.feed(event, T0)) == [("acme", "", DOWN)]
    assert states(t.feed({**event, "PeerStatus": "Reachable"}, T0)) == [("acme", DOWN, UP)]


def test_events_about_other_endpoints_and_contact_lifecycle_change_nothing() -> None:
    t = tracker(ACME)
    assert t.feed(contact_status("carrier", "Unreachable"), T0) == []
    assert t.feed(contact_status("trunk-other", "Reachable"), T0) == []
    assert t.feed({"Event": "Newstate", "Channel": "PJSIP/trunk-acme-00000001"}, T0) == []
    # A reload re-creating the contact: no state from it, but a listing is asked for.
    assert t.feed(contact_status("trunk-acme", "Created"), T0) == [] and t.needs_resync
    assert t.snapshot(1, T0).state == UNKNOWN  # type: ignore[union-attr]


def test_registration_states_from_registry_events() -> None:
    t = tracker(REG)
    base = {"Event": "Registry", "ChannelType": "PJSIP", "Username": "sip:eva@192.0.2.20:5060",
            "Domain": "sip:192.0.2.20:5060"}
    # Reachable but not registered yet: registering; then registered: up; then the provider refuses: rejected.
    assert states(t.feed(contact_status("trunk-reg-co", "Reachable", "800"), T0)) == [("reg-co", "", REGISTERING)]
    assert states(t.feed({**base, "Status": "Registered"}, T0)) == [("reg-co", REGISTERING, UP)]
    [rejected] = t.feed({**base, "Status": "Rejected"}, T0)
    assert (rejected.state, "rejected" in rejected.detail) == (REJECTED, True)
    # A registration of another account on the same host is not this trunk's.
    assert t.feed({**base, "Username": "sip:someone@192.0.2.20:5060", "Status": "Registered"}, T0) == []
    # chan_sip-style or IAX registrations are never a PJSIP trunk's.
    assert t.feed({**base, "ChannelType": "IAX2", "Status": "Registered"}, T0) == []


def test_a_rejected_registration_wins_over_a_qualify_answer() -> None:
    t = tracker(REG)
    t.feed({"Event": "Registry", "ChannelType": "PJSIP", "Username": REG.client_uri, "Domain": REG.server_uri,
            "Status": "Rejected"}, T0)
    assert t.snapshot(2, T0).state == REJECTED  # type: ignore[union-attr]
    assert t.feed(contact_status("trunk-reg-co", "Reachable", "500"), T0) == []  # still rejected


def test_resync_is_the_truth_for_what_events_missed() -> None:
    t = tracker(ACME, REG)
    changes = t.resync(
        endpoints={1: endpoint_detail("trunk-acme", ("Reachable", "2000")),
                   2: endpoint_detail("trunk-reg-co", ("Reachable", "900"))},
        registrations=[registration("trunk-reg-co", "Registered"),
                       {"Event": "OutboundRegistrationDetailComplete", "EventList": "Complete"}],
        channels=[], at=T0)
    assert states(changes) == [("acme", "", UP), ("reg-co", "", UP)]
    # Missed: acme stopped answering, the registration was refused.
    changes = t.resync(endpoints={1: endpoint_detail("trunk-acme", ("Unreachable", "0")),
                                  2: endpoint_detail("trunk-reg-co", ("Reachable", "900"))},
                       registrations=[registration("trunk-reg-co", "Rejected")], channels=[], at=T0)
    assert states(changes) == [("acme", UP, DOWN), ("reg-co", UP, REJECTED)]


def test_a_trunk_asterisk_did_not_load_is_down_and_a_disabled_one_is_disabled() -> None:
    t = tracker(ACME, TrunkSpec(trunk_id=3, name="off", enabled=False), REG)
    changes = t.resync(endpoints={1: [], 2: endpoint_detail("trunk-reg-co", ("Reachable", "1"))},
                       registrations=[], channels=[], at=T0)
    by_name = {c.trunk_name: c for c in changes}
    assert by_name["acme"].state == DOWN and "not loaded endpoint trunk-acme" in by_name["acme"].detail
    assert by_name["off"].state == DISABLED
    assert by_name["reg-co"].state == DOWN and "registration" in by_name["reg-co"].detail  # no such registration


def test_a_listing_taken_before_an_event_does_not_undo_the_event() -> None:
    t = tracker(ACME)
    t.feed(contact_status("trunk-acme", "Reachable", "100"), T0)
    mark = t.mark()  # the monitor asks for the listing here ...
    t.feed(contact_status("trunk-acme", "Unreachable"), T0)  # ... this arrives while it is on its way ...
    changes = t.resync(endpoints={1: endpoint_detail("trunk-acme", ("Reachable", "100"))}, registrations=None,
                       channels=[], at=T0, since_mark=mark)
    assert changes == [] and t.snapshot(1, T0).state == DOWN  # type: ignore[union-attr]
    # The next listing (requested after the event) applies.
    assert states(t.resync(endpoints={1: endpoint_detail("trunk-acme", ("Reachable", "100"))},
                           registrations=None, channels=[], at=T0, since_mark=t.mark())) == [("acme", DOWN, UP)]


def test_calls_now_and_today_from_channel_events_and_listings() -> None:
    t = tracker(ACME)
    new = {"Event": "Newchannel", "Channel": "PJSIP/trunk-acme-0000000a", "Uniqueid": "1733130000.10",
           "CallerIDNum": "+15550100", "Exten": "+15550199"}
    t.feed(new, T0)
    t.feed({**new, "Channel": "PJSIP/trunk-acme-0000000b", "Uniqueid": "1733130000.11"}, T0)
    t.feed({**new, "Channel": "PJSIP/carrier-0000000c", "Uniqueid": "1733130000.12"}, T0)  # not a trunk's
    t.feed({**new, "Channel": "UnicastRTP/127.0.0.1:20000-0x1", "Uniqueid": "1733130000.13"}, T0)
    snap = t.snapshot(1, T0)
    assert snap is not None and (snap.active_calls, snap.calls_today) == (2, 2)
    t.feed({"Event": "Hangup", "Channel": "PJSIP/trunk-acme-0000000a", "Uniqueid": "1733130000.10",
            "Cause": "16"}, T0)
    assert (t.snapshot(1, T0).active_calls, t.snapshot(1, T0).calls_today) == (1, 2)  # type: ignore[union-attr]
    # A listing that still shows the hung-up channel (taken just before) neither revives nor recounts it; a
    # channel whose Newchannel was missed is found and counted.
    t.resync(endpoints={1: endpoint_detail("trunk-acme", ("Reachable", "1"))}, registrations=None,
             channels=[channel("PJSIP/trunk-acme-0000000a", "1733130000.10"),
                       channel("PJSIP/trunk-acme-0000000b", "1733130000.11"),
                       channel("PJSIP/trunk-acme-0000000d", "1733130000.14")], at=T0)
    snap = t.snapshot(1, T0)
    assert snap is not None and (snap.active_calls, snap.calls_today) == (2, 3)
    # A new day (UTC) starts a new count; the calls still up stay up.
    tomorrow = datetime(2026, 12, 3, 0, 0, 5, tzinfo=UTC)
    snap = t.snapshot(1, tomorrow)
    assert snap is not None and (snap.active_calls, snap.calls_today) == (2, 0)
    assert snap.calls_counted_since == datetime(2026, 12, 3, tzinfo=UTC)


def test_calls_today_are_counted_from_the_monitors_start_when_it_started_today() -> None:
    t = TrunkTracker(started=T0)
    t.configure([ACME])
    assert t.snapshot(1, T0 + timedelta(minutes=5)).calls_counted_since == T0  # type: ignore[union-attr]


def test_asterisk_unreachable_makes_every_enabled_trunk_unknown_and_clears_calls() -> None:
    t = tracker(ACME, TrunkSpec(trunk_id=3, name="off", enabled=False))
    t.feed(contact_status("trunk-acme", "Reachable", "100"), T0)
    t.feed({"Event": "Newchannel", "Channel": "PJSIP/trunk-acme-00000001", "Uniqueid": "1.1"}, T0)
    changes = t.lost(T0)
    assert states(changes) == [("acme", UP, UNKNOWN), ("off", "", DISABLED)]
    assert "unreachable" in changes[0].detail
    assert t.snapshot(1, T0).active_calls == 0  # type: ignore[union-attr]
    assert t.lost(T0) == []  # still unreachable: no new change


def test_a_restored_state_read_again_is_not_a_change() -> None:
    t = tracker(ACME)
    t.restore(1, UP, T0 - timedelta(days=1))
    assert t.feed(contact_status("trunk-acme", "Reachable", "100"), T0) == []
    assert t.snapshot(1, T0).since == T0 - timedelta(days=1)  # type: ignore[union-attr]


def test_configure_drops_deleted_and_renamed_trunks() -> None:
    t = tracker(ACME, REG)
    dropped = t.configure([TrunkSpec(trunk_id=1, name="acme-new", server_uri=ACME.server_uri)])
    assert sorted(s.name for s in dropped) == ["acme", "reg-co"]
    assert t.snapshot(2, T0) is None
    assert t.feed(contact_status("trunk-acme", "Reachable"), T0) == []  # the old endpoint name is no one's
    assert states(t.feed(contact_status("trunk-acme-new", "Reachable"), T0)) == [("acme-new", "", UP)]


def test_channel_names_map_to_endpoints() -> None:
    assert endpoint_of_channel("PJSIP/trunk-acme-0000001a") == "trunk-acme"
    assert endpoint_of_channel("PJSIP/trunk-two-part-name-0000001a") == "trunk-two-part-name"
    assert endpoint_of_channel("Local/100@inbound-00000001;1") == ""
    assert endpoint_of_channel("PJSIP/") == ""
