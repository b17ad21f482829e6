"""Trunk changes against the real Asterisk: only Asterisk's rejection of *this* trunk rolls a change back
(review L16), never an unrelated error line that happens to contain its host."""

from __future__ import annotations

from admin_api.framework import SERVICES_KEY
from models import SipTrunk
from models.db import session_scope
from tests.api import test_asterisk as live
from tests.api.conftest import Api
from voicebot.asterisk.process import Asterisk

live_api = live.live_api


async def test_an_error_line_merely_containing_the_host_is_not_a_rejection(live_api: Api,
                                                                           asterisk: Asterisk) -> None:
    api = live_api
    trunks = api.app[SERVICES_KEY].trunks
    # A trunk that was fine when added and whose provider's DNS name no longer resolves: every reload of
    # res_pjsip logs errors for it, and those lines contain "127.0.0.12" ...
    with session_scope(api.engine) as session:
        session.add(SipTrunk(name="broken", host="127.0.0.12.invalid"))
    await trunks.sync()
    logged = await trunks.link.reload("module reload res_pjsip.so", marker="Type 'system' is not reloadable")
    assert [text for level, _src, text in logged if level == "ERROR" and "127.0.0.12" in text]

    # ... so a new, healthy trunk whose host is 127.0.0.12 must not be taken for the one Asterisk refuses.
    status, trunk = await api.call("POST", "/api/v1/sip/trunks", json={"name": "healthy", "host": "127.0.0.12"})
    assert status == 201, trunk
    assert "127.0.0.12" in await live.cli(asterisk, "pjsip show endpoint trunk-healthy")
    status, changed = await api.call("PATCH", f"/api/v1/sip/trunks/{trunk['id']}", json={"port": 5070})
    assert (status, changed["port"]) == (200, 5070), changed

    # A real rejection of the trunk is still one (and names the host field).
    status, error = await api.call("PATCH", f"/api/v1/sip/trunks/{trunk['id']}",
                                   json={"host": "sip.no-such-provider.invalid"})
    assert (status, error["error"]["code"], error["error"]["field"]) == (422, "asterisk_rejected", "host"), error
    assert "127.0.0.12" in await live.cli(asterisk, "pjsip show endpoint trunk-healthy")
