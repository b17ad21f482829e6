"""The static dialplan check (before Asterisk sees a file) and the offline dialplan API."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admin_api.dialplans import (
    context_headers,
    designer_problem,
    dial_targets,
    dialling_closure,
    jump_targets,
    outbound_problem,
    parse_dialplan,
    parse_dialplan_show,
    set_problem,
    sound_problem,
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


# ------------------------------ "dials out" is transitive, and computed jumps count ------------------------
def test_dialling_is_a_closure_over_includes_local_and_every_jump() -> None:
    calls = {
        "out": [("dial", "PJSIP/${EXTEN}@carrier")],
        "inc": [], "goto": [("goto", "inc,1,1")], "local": [("dial", "Local/1@GOTO")],
        "bg": [("background", "hello,,,local")], "opt": [("dial", "Local/1@safe,20,b(bg^1^1)")],
        "hh": [("set", "CHANNEL(hangup_handler_push)=opt,1,1")], "sub": [("gosubif", "1?hh,s,1(a:b)")],
        "safe": [("goto", "safe,1,1"), ("gotoif", "$[1 = 2]?2,1:safe,1,1")],
    }
    assert dialling_closure(calls, {"inc": ["out"]}, frozenset()) == {
        "out", "inc", "goto", "local", "bg", "opt", "hh", "sub"}
    # A jump computed at run time could go anywhere: it counts once anything dials out, and only then.
    calls["safe"].append(("goto", "${X}"))
    assert "safe" in dialling_closure(calls, {"inc": ["out"]}, frozenset())
    assert dialling_closure({"a": [("goto", "${X}")], "b": [("noop", "")]}, {}, frozenset()) == set()


def test_applied_check_sees_a_transitive_outbound_context() -> None:
    """From Asterisk's own view too: an admin's [staff] that only includes [out] dials out."""
    show = (
        "[ Context 'out' created by 'pbx_config' ]\n"
        "  '_X.' =>          1. Dial(PJSIP/${EXTEN}@carrier)                [out.conf:2]\n"
        "[ Context 'staff' created by 'pbx_config' ]\n"
        "  '5' =>            1. NoOp()                                      [out.conf:4]\n"
        "  Include =>        'out'                                          [pbx_config]\n"
        "[ Context 'ivr' created by 'pbx_config' ]\n"
        "  '1' =>            1. Goto(staff,0900,1)                          [ivr.conf:2]\n"
        "  '2' =>            1. Dial(Local/0900@staff)                      [ivr.conf:3]\n"
        "  '3' =>            1. Playback(/var/spool/asterisk/recording/x)   [ivr.conf:4]\n"
    )
    parsed = parse_dialplan("[ivr]\nexten => 1,1,Goto(staff,0900,1)\nexten => 2,1,Dial(Local/0900@staff)\n"
                            "exten => 3,1,Playback(/var/spool/asterisk/recording/x)\n")
    before = parse_dialplan_show(show.split("[ Context 'ivr'", maxsplit=1)[0])
    after = parse_dialplan_show(show)
    assert verify_loaded("ivr.conf", parsed, before, after, outbound=True) == []
    problems = verify_loaded("ivr.conf", parsed, before, after, outbound=False)
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4"], problems
    assert "[staff] dials out" in problems[0] and "[staff] dials out" in problems[1] and "absolute" in problems[2]


def _reference_goto_contexts(app: str, arguments: str) -> set[str]:
    """Where Asterisk's GotoIf/Goto/Gosub would send a call for text without '$' (ast_parseable_goto on the
    branches strsep() cuts at the first '?' and ':'), written independently of jump_targets."""
    if app in ("gotoif", "gosubif"):
        _cond, _q, rest = arguments.partition("?")
        first, _c, second = rest.partition(":")
        branches = [first, second]
    else:
        branches = [arguments]
    found = set()
    for branch in branches:
        label = branch.split("(")[0] if app.startswith("gosub") else branch
        parts = label.split(",")
        if len(parts) >= 3 and parts[0].strip(" \t"):  # an empty context is the current one
            found.add(parts[0].strip(" \t"))
    return found


ARGUMENT_TEXT = st.text(alphabet="ab01,?:^&/.()[]{}$\"= _", max_size=40)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(["goto", "gosub", "gotoif", "gosubif", "background", "dial", "set", "playback", "read",
                        "transfer", "noop"]), ARGUMENT_TEXT)
def test_fuzz_designer_checks_never_crash_and_never_miss_a_jump(app: str, arguments: str) -> None:
    """Any text: the checks answer None or a reason (no exception).  Where a target is accepted as literal, it
    names every context Asterisk's own splitting would jump to; any '$' a number-only $[...] does not explain
    makes the target computed."""
    targets = jump_targets(app, arguments)
    for why in (designer_problem(app, arguments, {"out"}, {"a", "b"}, frozenset()),
                sound_problem(app, arguments), set_problem(arguments)):
        assert why is None or isinstance(why, str)
    if app in ("goto", "gosub", "gotoif", "gosubif"):
        label = arguments.split("(", maxsplit=1)[0] if app == "gosub" else arguments
        if "$" in re.sub(r"\$\[[0-9 +*/%()<>=!&|-]*\]", "0", label):
            assert targets is None, arguments
        if "$" not in arguments:
            assert targets is not None
            assert _reference_goto_contexts(app, arguments) <= {t.strip() for t in targets}, arguments
            if "out" in _reference_goto_contexts(app, arguments):
                assert designer_problem(app, arguments, {"out"}, set(), frozenset()), arguments
