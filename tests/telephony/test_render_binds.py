"""Which address each Asterisk listener gets from the rendered configuration (review F14).

ARI/HTTP (plain HTTP, full call control) must stay on EVA_BIND_HOST whatever EVA_SIP_BIND_HOST says; SIP and
RTP go on the SIP address, and RTP is bound there explicitly on every endpoint, packaged or admin-managed.
"""

from __future__ import annotations

import re

from admin_api.trunks import render_trunks
from models import SipTrunk
from voicebot.asterisk.render import TEMPLATE_DIR, render_text, template_values
from voicebot.config import Settings


def _render(settings: Settings, name: str) -> str:
    return render_text((TEMPLATE_DIR / name).read_text(), template_values(settings), source=name)


def test_ari_stays_on_the_management_address_when_sip_moves_to_a_public_one() -> None:
    settings = Settings(bind_host="127.0.0.1", sip_bind_host="203.0.113.10", ari_password="a", ami_password="b")
    assert re.search(r"^bindaddr = 127\.0\.0\.1$", _render(settings, "http.conf"), re.M)
    pjsip = _render(settings, "pjsip.conf")
    assert "bind = 203.0.113.10:" in pjsip
    assert "media_address = 203.0.113.10" in pjsip and "bind_rtp_to_media_address = yes" in pjsip
    trunks = render_trunks([SipTrunk(name="acme", host="192.0.2.1")], bind_host="203.0.113.10", sip_port=5060)
    assert "media_address = 203.0.113.10" in trunks and "bind_rtp_to_media_address = yes" in trunks


def test_a_wildcard_sip_bind_names_no_media_address() -> None:
    # 0.0.0.0 in SDP would put the caller on hold: leave RTP to pjsip's default then.
    settings = Settings(bind_host="127.0.0.1", sip_bind_host="0.0.0.0", ari_password="a", ami_password="b")
    pjsip = _render(settings, "pjsip.conf")
    assert "media_address" not in pjsip
    trunks = render_trunks([SipTrunk(name="acme", host="192.0.2.1")], bind_host="0.0.0.0", sip_port=5060)
    assert "media_address" not in trunks
