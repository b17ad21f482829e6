"""The static dialplan check (before Asterisk sees a file) and the offline dialplan API."""

from __future__ import annotations

import pytest

from admin_api.dialplans import context_headers, parse_dialplan
from tests.api.conftest import Api
from voicebot.asterisk.render import DIALPLAN_DIR
from voicebot.errors import InvalidInput


def test_the_packaged_dialplans_pass() -> None:
    for path in DIALPLAN_DIR.glob("*.conf"):
        parsed = parse_dialplan(path.read_text(encoding="utf-8"))
        assert parsed.contexts and all(parsed.priorities.values()), path


def test_parse_records_contexts_priorities_applications_and_includes() -> None:
    text = (";-- a block\ncomment --;\n[sales]\nexten => 100,1,Answer() ; answer first\n"
            " same => n(greet),Playback(hello\\;world)\n same => n,Set(X=${CUT(A,\\,,1)})\n"
            "exten => _X.,hint,PJSIP/1000\nexten => _2XX,1,Hangup\ninclude => support\n\n[support]\n"
            "exten => s,1,NoOp($[1 + (2 * 3)])\n")
    parsed = parse_dialplan(text)
    assert parsed.contexts == ["sales", "support"]
    assert parsed.priorities == {"sales": {4, 5, 6, 8}, "support": {12}}
    assert set(parsed.applications) == {"answer", "playback", "set", "hangup", "noop"}
    assert parsed.includes == [("support", 9)]
    assert context_headers(text) == ["sales", "support"]


@pytest.mark.parametrize(("text", "words"), [
    ("exten => 1,1,Answer()\n", "before any [context]"),
    ("[a]\nsame => n,Answer()\n", "needs an 'exten'"),
    ("[a]\nexten => 1,1,Dial(PJSIP/${NUM\n", "invalid application call"),
    ("[a]\nexten => 1,1,Set(a=$[1+(2))\n", "missing ']'"),
    ("[a]\nexten => 1,1,Dial(PJSIP/${NUM)\n", "missing '}'"),
    ("[a]\nexten => 1,1,Set(a=b))x)\n", "unbalanced"),
    ("[a]\nexten => 1,1,Set(x=$[1+2)\n", "missing"),
    ("[a]\nexten => 1,x1,Answer()\n", "invalid priority"),
    ("[a]\nexten => 1 2,1,Answer()\n", "invalid extension"),
    ("[a]\nexten => 1,1,9Bad()\n", "invalid application"),
    ("[a]\n#include /etc/passwd\n", "#include"),
    ("[a]\nswitch => Realtime/foo\n", "unsupported statement"),
    ("[a]\nvar = 1\n", "unsupported statement"),
    ("[a b]\nexten => 1,1,Answer()\n", "invalid context name"),
    ("[globals]\nexten => 1,1,Answer()\n", "reserved"),
    ("[a](!)\nexten => 1,1,Answer()\n", "templates"),
    ("[a]\nexten => 1,1,Answer()\n[a]\nexten => 2,1,Answer()\n", "declared twice"),
    ("[a]\n", "no extensions"),
    (";-- never closed\n[a]\nexten => 1,1,Answer()\n", "never closed"),
    ("[a]\nexten => 1,1,Answer()\x00\n", "NUL"),
])
def test_broken_dialplans_are_refused_with_the_line(text: str, words: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_dialplan(text)
    assert words in raised.value.message
    assert raised.value.field == "content"


async def test_offline_dialplan_edit_and_revert(api: Api) -> None:
    status, packaged = await api.call("GET", "/api/v1/dialplans/inbound", role="viewer")
    assert status == 200 and packaged["source"] == "packaged"
    edited = packaged["content"] + "exten => 4300,1,Answer()\n same => n,Hangup()\n"
    status, saved = await api.call("PUT", "/api/v1/dialplans/inbound", role="designer", json={"content": edited})
    assert (status, saved["source"], saved["applied"]) == (200, "override", False)
    rendered = api.settings.asterisk_dir / "etc" / "dialplan" / "inbound.conf"
    assert rendered.read_text() == edited
    assert (api.settings.data_dir / "dialplan" / "inbound.conf").read_text() == edited
    status, error = await api.call("PUT", "/api/v1/dialplans/inbound", role="designer",
                                   json={"content": edited + "exten => oops\n"})
    assert (status, error["error"]["code"]) == (422, "invalid_input")
    assert rendered.read_text() == edited  # the broken version never replaced the working one
    status, error = await api.call("PUT", "/api/v1/dialplans/other", role="designer",
                                   json={"content": "[eva-inbound]\nexten => 1,1,Answer()\n"})
    assert (status, error["error"]["code"]) == (409, "conflict")
    status, error = await api.call("PUT", "/api/v1/dialplans/Bad.Name", role="designer",
                                   json={"content": "[x]\nexten => 1,1,Answer()\n"})
    assert status == 404
    assert (await api.call("DELETE", "/api/v1/dialplans/inbound", role="designer"))[0] == 204
    assert rendered.read_text() == packaged["content"]
    assert not (api.settings.data_dir / "dialplan" / "inbound.conf").exists()
