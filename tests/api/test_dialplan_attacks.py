"""Attacks on dialplan editing, against the real API and the real Asterisk 22 of the test session.

* Smuggling (review F2, experiment X2): text the validator reads as a comment but Asterisk loads.  Refused
  before Asterisk sees it, and, if a static check ever misses one again, caught after the reload by comparing
  what Asterisk itself loaded, then rolled back.
* Outbound dialling (F8): a designer's ``Dial``/``Transfer`` may not reach a trunk or a SIP URI; an admin's may.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from admin_api.dialplans import DialplanService, ParsedDialplan, parse_dialplan
from admin_api.framework import SERVICES_KEY
from tests.api import test_asterisk as live
from tests.api.conftest import Api
from voicebot.asterisk.process import Asterisk
from voicebot.config import Settings
from voicebot.errors import AsteriskRejected

live_api = live.live_api
cli = live.cli

SMUGGLE = ("[smug-entry]\nexten => 1,1,Goto(smug-hidden,1,1)\n;---\n[smug-hidden]\n"
           "exten => 1,1,Answer()\n same => n,MixMonitor(/tmp/smug.wav,,/bin/sh -c 'id > /tmp/smug-pwned')\n"
           " same => n,Wait(1)\n same => n,Hangup()\n; --;\n")
"""The review's X2 payload, byte for byte."""


def _service(api: Api) -> DialplanService:
    return api.app[SERVICES_KEY].dialplans


def _pwned(settings: Settings) -> list[Path]:
    """Where the payload's shell would leave its file: inside the Asterisk chroot, or on the host."""
    return [settings.asterisk_root / "tmp" / "smug-pwned", Path("/tmp/smug-pwned")]


async def _absent(asterisk: Asterisk, context: str) -> bool:
    return "There is no existence" in await cli(asterisk, f"dialplan show {context}")


async def _try_to_run(asterisk: Asterisk, settings: Settings) -> None:
    """Place a call into the entry context, as an inbound caller routed there would."""
    await cli(asterisk, "channel originate Local/1@smug-entry application Wait 3")
    await asyncio.sleep(2.5)
    assert not [p for p in _pwned(settings) if p.exists()]


# Asterisk numbers lines across the whole dialplan/*.conf glob, so a file sorting after inbound.conf has its
# lines shifted: the old line-by-line check then refused it by accident.  "a-smuggle" sorts first.
@pytest.mark.parametrize("name", ["a-smuggle", "smuggle"])
async def test_x2_smuggled_context_is_refused_and_never_loaded(live_api: Api, asterisk: Asterisk,
                                                               name: str) -> None:
    api = live_api
    for path in _pwned(api.settings):
        path.unlink(missing_ok=True)
    status, error = await api.call("PUT", f"/api/v1/dialplans/{name}", role="designer", json={"content": SMUGGLE})
    assert 400 <= status < 500, error
    assert error["error"]["field"] == "content" and "line 3" in error["error"]["message"], error
    assert (await api.call("GET", f"/api/v1/dialplans/{name}", role="viewer"))[0] == 404
    assert not (_service(api).etc_dir / f"{name}.conf").exists()
    assert await _absent(asterisk, "smug-hidden") and await _absent(asterisk, "smug-entry")
    await _try_to_run(asterisk, api.settings)


@pytest.mark.parametrize(("content", "words"), [
    # A ';--' after a ';' comment is comment text for Asterisk: the lines after it are loaded.
    ("[smug-entry]\nexten => 1,1,Goto(smug-hidden,1,1) ; see ;-- below\n[smug-hidden]\n"
     "exten => 1,1,MixMonitor(/tmp/smug.wav,,/bin/sh -c 'id > /tmp/smug-pwned')\n; --;\n", "line 2"),
    # '--;' with no block open: Asterisk counts below zero and hides what follows; refused as ambiguous.
    ("[smug-entry]\nexten => 1,1,NoOp(a--;b)\n;--\n[smug-hidden]\nexten => 1,1,NoOp()\n--;\n", "line 2"),
    # An escaped '\;--' is not a block start either.
    ("[smug-entry]\nexten => 1,1,NoOp()\n\\;--\n[smug-hidden]\nexten => 1,1,MixMonitor(/tmp/x.wav,,id)\n--;\n",
     "line 3"),
])
async def test_other_comment_differentials_are_refused(live_api: Api, asterisk: Asterisk, content: str,
                                                       words: str) -> None:
    status, error = await live_api.call("PUT", "/api/v1/dialplans/a-smuggle", role="designer",
                                        json={"content": content})
    assert (status, error["error"]["code"]) == (422, "invalid_input"), error
    assert words in error["error"]["message"]
    assert await _absent(asterisk, "smug-hidden") and await _absent(asterisk, "smug-entry")


async def test_nested_block_comments_hide_exactly_what_asterisk_hides(live_api: Api, asterisk: Asterisk) -> None:
    """Nesting is honoured as Asterisk does: ';-- ;-- --; --;' and a block spanning lines that holds an inner
    pair.  What both read as comment is accepted, and Asterisk indeed loads none of it."""
    content = (";-- ;-- --; --;\n[nest-visible]\nexten => 1,1,NoOp(shown)\n"
               ";-- outer ;-- inner --;\n[nest-hidden]\nexten => 1,1,MixMonitor(/tmp/x.wav,,id)\n--;\n"
               "exten => 2,1,NoOp(also shown)\n")
    status, saved = await live_api.call("PUT", "/api/v1/dialplans/nested", role="designer",
                                        json={"content": content})
    assert (status, saved["applied"], saved["contexts"]) == (200, True, ["nest-visible"]), saved
    shown = await cli(asterisk, "dialplan show nest-visible")
    assert "NoOp(shown)" in shown and "NoOp(also shown)" in shown
    assert await _absent(asterisk, "nest-hidden")
    # The same text with one closing marker missing leaves the block open: refused, nothing changes.
    status, error = await live_api.call("PUT", "/api/v1/dialplans/nested", role="designer",
                                        json={"content": content.replace("--; --;\n", "--;\n", 1)})
    assert (status, error["error"]["code"]) == (422, "invalid_input") and "never closed" in error["error"]["message"]
    assert "NoOp(also shown)" in await cli(asterisk, "dialplan show nest-visible")


@pytest.mark.parametrize("context", ["from-trunk", "default", "eva-inbound"])
async def test_contexts_of_other_files_cannot_be_redefined(live_api: Api, asterisk: Asterisk,
                                                           context: str) -> None:
    before = await cli(asterisk, f"dialplan show {context}")
    for content, code in [
        (f"[{context}]\nexten => 666,1,Answer()\n", "conflict"),
        (f"[own-ctx]\nexten => 1,1,NoOp()\n;---\n[{context}]\nexten => 666,1,Answer()\n; --;\n", "invalid_input"),
    ]:
        status, error = await live_api.call("PUT", "/api/v1/dialplans/a-redefine", role="designer",
                                            json={"content": content})
        assert error["error"]["code"] == code and 400 <= status < 500, error
    assert await cli(asterisk, f"dialplan show {context}") == before


def _naive(content: str, hidden: range) -> ParsedDialplan:
    """What a validator that misses lines ``hidden`` would have parsed (a static-check bug, simulated)."""
    lines = content.split("\n")
    return parse_dialplan("\n".join("" if n in hidden else line for n, line in enumerate(lines, start=1)))


@pytest.mark.parametrize(("content", "hidden", "words"), [
    (SMUGGLE, range(3, 10), "smug-hidden"),
    # Lines smuggled into a context extensions.conf owns ...
    ("[smug-entry]\nexten => 1,1,NoOp()\n[from-trunk]\nexten => 666,1,Answer()\n", range(3, 5), "[from-trunk]"),
    # ... or an include added to one (includes carry no file name in Asterisk's view).
    ("[smug-entry]\nexten => 1,1,NoOp()\n[default]\ninclude => smug-entry\n", range(3, 5), "[default]"),
    # An application the static check never saw, on a line it thought was a comment.
    ("[smug-entry]\nexten => 1,1,NoOp()\n same => n,MixMonitor(/tmp/x.wav,,id)\n", range(3, 4), "mixmonitor"),
])
async def test_applied_check_catches_what_a_static_check_missed(live_api: Api, asterisk: Asterisk, content: str,
                                                                hidden: range, words: str) -> None:
    service = _service(live_api)
    before = {c: await cli(asterisk, f"dialplan show {c}") for c in ("from-trunk", "default", "eva-inbound")}
    parsed = _naive(content, hidden)
    async with service.link.lock:
        with pytest.raises(AsteriskRejected) as raised:
            await service._apply("a-smuggle", content, parsed, outbound=False)
    assert words in raised.value.message, raised.value.message
    assert not (service.etc_dir / "a-smuggle.conf").exists()  # rolled back
    assert await _absent(asterisk, "smug-entry") and await _absent(asterisk, "smug-hidden")
    assert {c: await cli(asterisk, f"dialplan show {c}") for c in before} == before


async def test_a_custom_dialplan_sorting_after_the_others_is_applied(live_api: Api, asterisk: Asterisk) -> None:
    """Its line numbers in Asterisk's view are shifted by the files before it; it is still verified and kept."""
    content = "[zz-routing]\nexten => 7100,1,Answer()\n same => n,Hangup()\n"
    status, saved = await live_api.call("PUT", "/api/v1/dialplans/zz-routing", role="designer",
                                        json={"content": content})
    assert (status, saved["applied"]) == (200, True), saved
    assert "7100" in await cli(asterisk, "dialplan show zz-routing")
    # And a broken one sorting last is still caught line for line (Asterisk keeps one of two priorities 1).
    status, error = await live_api.call("PUT", "/api/v1/dialplans/zz-routing", role="designer", json={
        "content": "[zz-routing]\nexten => 7101,1,Answer()\nexten => 7101,1,Hangup()\n"})
    assert (status, error["error"]["code"]) == (422, "asterisk_rejected"), error
    assert "line 3 was not loaded: Unable to register extension '7101' priority 1" in error["error"]["message"]
    assert "7100" in await cli(asterisk, "dialplan show zz-routing")


# ------------------------------ F8: outbound dialling is an admin decision -----------------------------
DESIGNER_REFUSED = [
    "exten => 1,1,Dial(PJSIP/5551234@carrier)",
    "exten => 1,1,Dial(PJSIP/carrier/sip:09001234@toll.example.com)",
    "exten => 1,1,Dial(PJSIP/trunk-acme,30)",
    "exten => 1,1,Dial(Local/1@f8-ctx&PJSIP/5551234@carrier)",
    "exten => 1,1,Dial(${TARGET})",
    "exten => 1,1,Dial(Local/${EXTEN}@f8-ctx)",
    "exten => 1,1,Dial(local/1@no-such-ctx)",
    "exten => 1,1,Transfer(PJSIP/sip:09001234@toll.example.com)",
    "exten => 1,1,Transfer(600)",
]


async def test_designers_cannot_dial_out_admins_can(live_api: Api, asterisk: Asterisk) -> None:
    api = live_api
    for line in DESIGNER_REFUSED:
        status, error = await api.call("PUT", "/api/v1/dialplans/f8", role="designer",
                                       json={"content": f"[f8-ctx]\n{line}\n"})
        assert (status, error["error"]["code"], error["error"]["field"]) == (403, "outbound_dial_admin_only",
                                                                              "content"), (line, error)
        assert error["error"]["message"].startswith("line 2: "), error
        assert await _absent(asterisk, "f8-ctx")
    assert "only an admin" in (await api.call("PUT", "/api/v1/dialplans/f8", role="designer", json={
        "content": "[f8-ctx]\n" + DESIGNER_REFUSED[0] + "\n"}))[1]["error"]["message"]

    # Internal targets are a designer's to use: Local channels into the dialplan.
    status, saved = await api.call("PUT", "/api/v1/dialplans/f8", role="designer", json={
        "content": "[f8-ctx]\nexten => 1,1,Dial(Local/600@eva-inbound&Local/2@f8-ctx/n,20,tT)\n"
                   "exten => 2,1,Answer()\n same => n,Hangup()\n"})
    assert (status, saved["applied"]) == (200, True), saved
    assert "Dial(Local/600@eva-inbound&Local/2@f8-ctx/n,20,tT)" in await cli(asterisk, "dialplan show f8-ctx")

    # The same trunk dial written by an admin is applied ...
    admin_content = "[f8-ctx]\nexten => 1,1,Dial(PJSIP/5551234@carrier,30)\n same => n,Transfer(600)\n"
    status, saved = await api.call("PUT", "/api/v1/dialplans/f8", role="admin", json={"content": admin_content})
    assert (status, saved["applied"]) == (200, True), saved
    assert "Dial(PJSIP/5551234@carrier,30)" in await cli(asterisk, "dialplan show f8-ctx")
    # ... and a designer cannot edit that file while it dials out (nor keep the admin's line).
    status, error = await api.call("PUT", "/api/v1/dialplans/f8", role="designer",
                                   json={"content": admin_content + "exten => 3,1,NoOp()\n"})
    assert (status, error["error"]["code"]) == (403, "outbound_dial_admin_only")
    assert "'3'" not in await cli(asterisk, "dialplan show f8-ctx")
    # Deleting it is fine: it removes outbound dialling, it does not add it.
    assert (await api.call("DELETE", "/api/v1/dialplans/f8", role="designer"))[0] == 204
    assert await _absent(asterisk, "f8-ctx")


async def test_designers_cannot_lead_callers_into_an_admins_outbound_context(live_api: Api,
                                                                             asterisk: Asterisk) -> None:
    api = live_api
    status, saved = await api.call("PUT", "/api/v1/dialplans/f8-out", role="admin", json={
        "content": "[f8-out]\nexten => _X.,1,Dial(PJSIP/${EXTEN}@carrier)\n"})
    assert (status, saved["applied"]) == (200, True), saved
    for line in ("exten => 1,1,Dial(Local/09001234@f8-out)", "include => f8-out", "exten => 1,1,Goto(f8-out,0900,1)",
                 "exten => 1,1,Gosub(f8-out,0900,1)", "exten => 1,1,GotoIf($[1]?f8-ivr,2,1:f8-out,0900,1)",
                 "exten => 1,1,Goto(${CTX},0900,1)", "exten => 1,1,Dial(Local/2@f8-ivr,20,G(f8-out^0900^1))"):
        status, error = await api.call("PUT", "/api/v1/dialplans/f8-ivr", role="designer",
                                       json={"content": f"[f8-ivr]\nexten => 2,1,NoOp()\n{line}\n"})
        assert (status, error["error"]["code"]) == (403, "outbound_dial_admin_only"), (line, error)
        assert "f8-out" in error["error"]["message"]
        assert await _absent(asterisk, "f8-ivr")
    # Jumps within the designer's own contexts are still theirs.
    status, saved = await api.call("PUT", "/api/v1/dialplans/f8-ivr", role="designer", json={
        "content": "[f8-ivr]\nexten => 1,1,Goto(f8-ivr,2,1)\nexten => 2,1,GotoIf($[1]?3)\n same => n,Hangup()\n"
                   "exten => 3,1,Goto(eva-inbound,600,1)\n"})
    assert (status, saved["applied"]) == (200, True), saved


# ------------------------------ F8 bypasses: hidden, unmodelled and indirect jumps ------------------------
ADMIN_OUTBOUND = ("[f8-dialout]\nexten => _X.,1,Dial(PJSIP/${EXTEN}@carrier)\n"
                  "[f8-staff]\ninclude => f8-dialout\nexten => 5,1,Goto(f8-dialout,0900123,1)\n"
                  "[f8-staff2]\nexten => 5,1,Gosub(f8-staff,5,1)\n")
"""An admin's trunk context, and contexts that reach it only indirectly (include, Goto, a Gosub of those)."""

BYPASSES = [
    # (a) the jump target hidden in a variable or an expression (Asterisk substitutes before splitting)
    ("exten => 1,1,Set(X=f8-dialout,0900123,1)\n same => n,Goto(${X})", "variable"),
    ("exten => 1,1,Set(X=1?f8-dialout,0900123,1:)\n same => n,GotoIf(${X}?f8-byp,2,1)", "variable"),
    ("exten => 1,1,GotoIf($[1?1::1]?f8-dialout,0900123,1)", "expression"),
    ("exten => 1,1,GotoIf($[\"x?f8-dialout,0900123,1:\"]?f8-byp,2,1)", "variable"),
    ("exten => 1,1,Gosub(${X},1)", "variable"),
    # (b) jumps that were not modelled
    ("exten => 1,1,Background(hello,,,f8-dialout)", "f8-dialout"),
    ("exten => 1,1,Background(hello,,,${CTX})", "variable"),
    ("exten => 1,1,Background(hello,${X})", "variable"),
    ("exten => 1,1,Dial(Local/2@f8-byp,20,B(f8-dialout^0900123^1))", "f8-dialout"),
    ("exten => 1,1,Dial(Local/2@f8-byp,20,b(f8-dialout^0900123^1))", "f8-dialout"),
    ("exten => 1,1,Dial(Local/2@f8-byp,20,U(f8-dialout))", "f8-dialout"),
    ("exten => 1,1,Set(CHANNEL(hangup_handler_push)=f8-dialout,0900123,1)", "hangup_handler"),
    ("exten => 1,1,Set(CHANNEL(after_bridge_goto)=f8-dialout,0900123,1)", "CHANNEL"),
    ("exten => 1,1,Set(GLOBAL(EVA_APP)=other)", "GLOBAL"),
    ("exten => 1,1,Set(SHARED(X)=1)", "SHARED"),
    ("exten => 1,1,Set(__TRANSFER_CONTEXT=f8-dialout)", "TRANSFER_CONTEXT"),
    ("exten => 1,1,Set(${N}=f8-dialout)", "variable"),
    # (c) "dials out" is transitive: an admin's context that includes or jumps into a trunk context
    ("exten => 1,1,Dial(Local/0900123@f8-staff)", "f8-staff"),
    ("exten => 1,1,Goto(f8-staff,0900123,1)", "f8-staff"),
    ("exten => 1,1,Gosub(f8-staff,5,1)", "f8-staff"),
    ("exten => 1,1,Goto(f8-staff2,5,1)", "f8-staff2"),
    ("include => f8-staff", "f8-staff"),
]


async def _admin_outbound(api: Api) -> None:
    status, saved = await api.call("PUT", "/api/v1/dialplans/f8-out", role="admin", json={"content": ADMIN_OUTBOUND})
    assert (status, saved["applied"]) == (200, True), saved


@pytest.mark.parametrize(("line", "words"), BYPASSES)
async def test_f8_bypasses_are_refused_for_designers(live_api: Api, asterisk: Asterisk, line: str,
                                                     words: str) -> None:
    api = live_api
    await _admin_outbound(api)
    content = f"[f8-byp]\nexten => 2,1,NoOp()\n{line}\n"
    status, error = await api.call("PUT", "/api/v1/dialplans/f8-byp", role="designer", json={"content": content})
    assert (status, error.get("error", {}).get("code"), error.get("error", {}).get("field")) == (
        403, "outbound_dial_admin_only", "content"), (line, error)
    assert error["error"]["message"].startswith("line "), error
    assert words in error["error"]["message"], (line, error)
    assert await _absent(asterisk, "f8-byp")


async def test_admins_keep_full_power_and_designers_their_own_jumps(live_api: Api, asterisk: Asterisk) -> None:
    api = live_api
    await _admin_outbound(api)
    # An admin keeps full power over the same lines.
    content = "[f8-byp]\nexten => 2,1,NoOp()\n" + "\n".join(
        line.replace("exten => 1,", f"exten => {10 + n},") for n, (line, _) in enumerate(BYPASSES)) + "\n"
    status, saved = await api.call("PUT", "/api/v1/dialplans/f8-byp", role="admin", json={"content": content})
    assert (status, saved["applied"]) == (200, True), saved
    assert (await api.call("DELETE", "/api/v1/dialplans/f8-byp", role="admin"))[0] == 204
    # What designers legitimately write still works: literal jumps and menus within their own contexts.
    status, saved = await api.call("PUT", "/api/v1/dialplans/f8-byp", role="designer", json={"content": (
        "[f8-byp]\nexten => 1,1,Background(${EVA_SOUNDS}/eva-selftest,,,f8-byp)\n same => n,WaitExten(3)\n"
        " same => n,GotoIf($[1 = 1]?f8-byp,2,1:3,1)\n same => n,Gosub(f8-byp,3,1(${EXTEN}))\n"
        " same => n,Set(CHANNEL(language)=de)\n same => n,Set(__MYVAR=${CALLERID(num)})\n"
        " same => n,Dial(Local/2@f8-byp,20,tTG(f8-byp^2^1))\n"
        "exten => 2,1,Playback(hello-world&digits/1)\nexten => 3,1,Return()\n")})
    assert (status, saved["applied"]) == (200, True), saved
    assert (await api.call("DELETE", "/api/v1/dialplans/f8-byp", role="designer"))[0] == 204
    assert (await api.call("DELETE", "/api/v1/dialplans/f8-out", role="admin"))[0] == 204


@pytest.mark.parametrize("sound", ["/var/spool/asterisk/recording/0123", "../../spool/asterisk/recording/0123",
                                   "hello&/etc/passwd", "${EVA_SOUNDS}/../../recording/1", "${REC}"])
@pytest.mark.parametrize("app", ["Playback({})", "Background({})", "Read(D,{},1)"])
async def test_designers_cannot_play_files_outside_the_sounds(live_api: Api, asterisk: Asterisk, sound: str,
                                                              app: str) -> None:
    """Call recordings live under the spool: a designer's Playback of an absolute or '..' path would play them
    to any caller."""
    content = f"[f8-snd]\nexten => 1,1,{app.format(sound)}\n"
    status, error = await live_api.call("PUT", "/api/v1/dialplans/f8-snd", role="designer",
                                        json={"content": content})
    assert (status, error["error"]["code"]) == (422, "invalid_input"), error
    assert error["error"]["message"].startswith("line 2: "), error
    assert await _absent(asterisk, "f8-snd")


@pytest.mark.parametrize("line", ["exten => 1,1,Goto(f8-staff,0900123,1)", "exten => 1,1,Dial(Local/0900123@f8-staff)",
                                  "exten => 1,1,Background(hello,,,f8-staff2)", "include => f8-staff",
                                  "exten => 1,1,Set(GLOBAL(EVA_APP)=other)",
                                  "exten => 1,1,Playback(/var/spool/asterisk/recording/0123)"])
async def test_applied_check_refuses_the_bypasses_from_asterisks_own_view(live_api: Api, asterisk: Asterisk,
                                                                          line: str) -> None:
    """Were the static check skipped, the check of what Asterisk loaded refuses the same lines and rolls back."""
    await _admin_outbound(live_api)
    service = _service(live_api)
    content = f"[f8-byp]\nexten => 2,1,NoOp()\n{line}\n"
    async with service.link.lock:
        with pytest.raises(AsteriskRejected) as raised:
            await service._apply("f8-byp", content, parse_dialplan(content), outbound=False)
    assert "line 3" in raised.value.message or "includes a context that dials out" in raised.value.message
    assert not (service.etc_dir / "f8-byp.conf").exists()
    assert await _absent(asterisk, "f8-byp")
