"""The static dialplan check (before Asterisk sees a file) and the offline dialplan API."""

from __future__ import annotations

import pytest

from admin_api.dialplans import (
    context_headers,
    dial_targets,
    outbound_problem,
    parse_dialplan,
    parse_dialplan_show,
    verify_loaded,
)
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


# ------------------------------ designers and outbound dialling (offline) -------------------------------
async def test_offline_designer_dial_rules(api: Api) -> None:
    """Without Asterisk the same static rules hold: trunks and URIs are for admins (403), Local is fine."""
    refused = "[dial-ctx]\nexten => 1,1,Dial(PJSIP/5551234@carrier)\n"
    status, error = await api.call("PUT", "/api/v1/dialplans/dial", role="designer", json={"content": refused})
    assert (status, error["error"]["code"]) == (403, "outbound_dial_admin_only")
    assert not (api.settings.asterisk_dir / "etc" / "dialplan" / "dial.conf").exists()
    status, saved = await api.call("PUT", "/api/v1/dialplans/dial", role="admin", json={"content": refused})
    assert (status, saved["applied"]) == (200, False)
    status, saved = await api.call("PUT", "/api/v1/dialplans/dial", role="designer", json={
        "content": "[dial-ctx]\nexten => 1,1,Dial(Local/100@eva-inbound)\n"})
    assert status == 200, saved


def test_admin_listed_dial_targets_are_open_to_designers() -> None:
    allowed = dial_targets(" PJSIP/reception , PJSIP/sales,")
    assert allowed == {"PJSIP/reception", "PJSIP/sales"}
    contexts = {"ivr"}
    assert outbound_problem("dial", "PJSIP/reception,20", contexts, allowed) is None
    assert outbound_problem("dial", "PJSIP/reception&Local/1@ivr", contexts, allowed) is None
    for arguments in ("PJSIP/reception2", "PJSIP/reception/sip:1@x", "PJSIP/${X}", "Local/1@ivr&PJSIP/carrier"):
        assert outbound_problem("dial", arguments, contexts, allowed), arguments
    assert outbound_problem("transfer", "600", contexts, allowed)
    assert outbound_problem("playback", "PJSIP/x", contexts, allowed) is None


def test_dialplan_show_is_read_by_its_own_layout() -> None:
    """Application data is the designer's text: it cannot fake a context header or a source reference."""
    output = (
        "[ Context 'ivr' created by 'pbx_config' ]\n"
        "  '1' =>            1. NoOp([ Context 'x' created by 'y' ] [inbound.conf:3]) [ivr.conf:2]\n"
        "     [greet]        2. Playback(hello)                             [ivr.conf:3]\n"
        "  '2' =>            hint: PJSIP/x                                  [ivr.conf:4]\n"
        "  Include =>        'other'                                        [pbx_config]\n"
        "  Alt. Switch =>    'Loopback/foo'                                 [pbx_config]\n"
        "\n-= 2 extensions (3 priorities) in 1 context. =-\n"
    )
    loaded = parse_dialplan_show(output)
    assert list(loaded) == ["ivr"]
    ivr = loaded["ivr"]
    assert [(p.file, p.line, p.application) for p in ivr.priorities] == [
        ("ivr.conf", 2, "noop"), ("ivr.conf", 3, "playback"), ("ivr.conf", 4, "")]
    assert ivr.includes == ["other"]
    assert [line.split()[:3] for line in ivr.other] == [["Alt.", "Switch", "=>"]]


def test_applied_check_sees_an_include_of_an_outbound_context() -> None:
    """After the reload, from Asterisk's own view: a designer's context may not include one that dials out."""
    show = (
        "[ Context 'out' created by 'pbx_config' ]\n"
        "  '_X.' =>          1. Dial(PJSIP/${EXTEN}@carrier)                [out.conf:2]\n"
        "[ Context 'ivr' created by 'pbx_config' ]\n"
        "  '1' =>            1. NoOp()                                      [ivr.conf:2]\n"
        "  Include =>        'out'                                          [pbx_config]\n"
    )
    parsed = parse_dialplan("[ivr]\nexten => 1,1,NoOp()\ninclude => out\n")
    before = parse_dialplan_show(show.split("[ Context 'ivr'", maxsplit=1)[0])
    after = parse_dialplan_show(show)
    assert verify_loaded("ivr.conf", parsed, before, after, outbound=True) == []
    assert verify_loaded("ivr.conf", parsed, before, after, outbound=False) == [
        "context [ivr] includes a context that dials out"]
