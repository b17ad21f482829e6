"""Real SIP calls (pjsua2) into the real Asterisk 22."""

from __future__ import annotations

import pytest

from tests.conftest import Caller
from voicebot.asterisk.process import Asterisk
from voicebot.audio import read_wav, voiced_regions, voiced_seconds


def test_selftest_prompt_is_heard_by_the_caller(caller: Caller, asterisk: Asterisk) -> None:
    # Extension 600 plays a Piper-made prompt of known length, then hangs up.
    prompt = read_wav(asterisk.settings.sounds_dir / "eva-selftest.wav")
    result = caller.call("600", timeout=prompt.seconds + 8)
    assert result.connected, result
    assert result.status_code == 200
    assert result.remote_hangup, "Asterisk should hang up after the prompt"
    heard = read_wav(result.record_path)
    voiced = voiced_seconds(heard)
    expected = voiced_seconds(prompt)
    # G.711 and the jitter buffer blur edges a little; the bulk of the prompt must arrive.
    assert expected * 0.8 <= voiced <= expected * 1.2 + 0.2, (voiced, expected)
    regions = voiced_regions(heard)
    assert regions and regions[0][0] < 1.0, regions  # audio starts right after answer: no dead air


def test_unknown_source_address_is_not_answered(caller: Caller, asterisk: Asterisk) -> None:
    # 127.0.0.2 is not the carrier's address and matches no endpoint: Asterisk must challenge, never answer.
    result = caller.call("100", record=False, timeout=5, bind_ip="127.0.0.2")
    assert not result.connected
    assert result.status_code in (401, 403), result
    assert "No matching endpoint found" in (asterisk.settings.asterisk_dir / "log" / "messages.log").read_text()


@pytest.mark.parametrize("claimed", ["carrier", "trunk-acme"])
def test_claiming_to_be_a_trunk_by_name_does_not_help(caller: Caller, asterisk: Asterisk, claimed: str) -> None:
    # Endpoints are identified by source address only; a From user naming an endpoint changes nothing.
    result = caller.call("600", record=False, timeout=5, bind_ip="127.0.0.2", from_user=claimed)
    assert not result.connected
    assert result.status_code in (401, 403), result


def test_asterisk_runs_as_a_user_no_host_account_has(asterisk: Asterisk) -> None:
    import os
    import pwd

    pid = asterisk.pid()
    assert pid is not None
    uid = os.stat(f"/proc/{pid}").st_uid
    assert uid != 0
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)  # not postgres, not anyone on the host
    # It reads its configuration (root's, its group) and owns only what it writes.
    conf = os.stat(asterisk.settings.asterisk_dir / "etc" / "pjsip.conf")
    assert (conf.st_uid, conf.st_gid) == (0, os.stat(f"/proc/{pid}").st_gid)
    assert os.stat(asterisk.settings.asterisk_dir / "log").st_uid == uid


def test_unknown_number_in_default_context_is_refused(asterisk: Asterisk) -> None:
    # Nothing in the default context answers; the carrier context only reaches eva-inbound.
    plan = asterisk.cli("dialplan show default")
    assert "Hangup(21)" in plan
    assert "Stasis" not in plan
    endpoints = asterisk.cli("pjsip show endpoints")
    assert "carrier" in endpoints
    assert "anonymous" not in endpoints


def test_rtp_is_bound_to_the_sip_address_never_the_wildcard(caller: Caller, asterisk: Asterisk) -> None:
    # Review F14: without media_address + bind_rtp_to_media_address, chan_pjsip binds each call's RTP socket
    # to 0.0.0.0 (every interface), even when SIP itself listens on loopback.
    import re
    import subprocess
    import threading
    import time

    settings = asterisk.settings
    expected = settings.sip_bind_host or settings.bind_host
    results: list[object] = []
    call = threading.Thread(target=lambda: results.append(caller.call("600", record=False, timeout=6)))
    call.start()
    pid = asterisk.pid()
    rtp: list[str] = []
    try:
        for _ in range(100):
            listing = subprocess.run(["ss", "-ulpnH"], capture_output=True, text=True, check=True).stdout
            local = [line.split()[3] for line in listing.splitlines() if f"pid={pid}," in line]
            rtp = [a for a in local if settings.rtp_port_start <= int(a.rsplit(":", 1)[1]) <= settings.rtp_port_end]
            if rtp:
                break
            time.sleep(0.1)
    finally:
        call.join()
    assert results and getattr(results[0], "connected", False), results
    assert rtp, "no RTP socket of Asterisk seen during the call"
    print(f"\nAsterisk RTP sockets during the call: {rtp}")
    assert all(address.rsplit(":", 1)[0] == expected for address in rtp), rtp
    # Strict RTP is on (rtp.conf says seqno; the CLI shows any strict mode as "Yes").
    shown = asterisk.cli("rtp show settings")
    assert re.search(r"Strict RTP:\s+Yes", shown), shown
