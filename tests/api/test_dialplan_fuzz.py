"""Fuzzing the dialplan parser against an independent model of how Asterisk 22 reads comments.

``reference_lines`` below is a second, deliberately literal implementation of the comment loop of
``config_text_file_load`` in Asterisk's ``main/config.c``: it works on bytes, reads lines the way ``fgets`` does
into an 8 KiB buffer (skipping longer lines), and keeps the C pointer arithmetic (``process_buf``, ``new_buf``,
the NUL written over a comment start, the ``memmove`` that drops an escaping backslash or joins the text around a
closed block).  The parser's own scanner is written differently (segments of a Python string), so agreement on
thousands of generated texts is evidence that both match the C code, not that one was copied from the other.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from admin_api.asterisk_link import AsteriskLink
from admin_api.dialplans import MAX_LINE_BYTES, DialplanService, parse_dialplan, scan_comments
from tests.api.conftest import offline_settings
from voicebot.errors import EvaError, InvalidInput

BUFFER = 8192
NEST_LIMIT = 128
SPACE = b" \t\n\v\f\r"


class AsteriskHangs(Exception):
    """The input reaches Asterisk's nesting limit, where its comment loop stops advancing."""


def _strlen(buf: bytearray, at: int) -> int:
    return buf.index(0, at) - at


def _strchr(buf: bytearray, at: int, char: int) -> int | None:
    end = buf.index(0, at)
    found = buf.find(bytes([char]), at, end)
    return None if found < 0 else found


def _memmove(buf: bytearray, dst: int, src: int, count: int) -> None:
    buf[dst : dst + count] = buf[src : src + count]


def _fgets(data: bytes, pos: int) -> tuple[bytes, int] | None:
    if pos >= len(data):
        return None
    newline = data.find(b"\n", pos, pos + BUFFER - 1)
    end = newline + 1 if newline >= 0 else min(len(data), pos + BUFFER - 1)
    return data[pos:end], end


def reference_lines(data: bytes) -> dict[int, bytes | None]:
    """Line number → the stripped text Asterisk passes to process_text_line (None: not parsed at all)."""
    out: dict[int, bytes | None] = {}
    comment = 0
    lineno = 0
    pos = 0
    while True:
        lineno += 1
        got = _fgets(data, pos)
        if got is None:
            return out
        chunk, pos = got
        if len(chunk) == BUFFER - 1:  # "Line too long, skipping": also the next partial chunk
            while (more := _fgets(data, pos)) is not None:
                chunk, pos = more
                if len(chunk) != BUFFER - 1:
                    break
            continue
        buf = bytearray(chunk) + b"\0\0\0\0"
        new_buf = 0
        process_buf: int | None = None if comment else 0
        while (comment_p := _strchr(buf, new_buf, ord(";"))) is not None:
            if comment_p > new_buf and buf[comment_p - 1] == ord("\\"):
                new_buf = comment_p
                _memmove(buf, comment_p - 1, comment_p, _strlen(buf, comment_p) + 1)
            elif buf[comment_p + 1] == ord("-") and buf[comment_p + 2] == ord("-") and buf[comment_p + 3] != ord("-"):
                if comment >= NEST_LIMIT:
                    raise AsteriskHangs
                buf[comment_p] = 0
                new_buf = comment_p + 3
                comment += 1
            elif comment_p >= new_buf + 2 and buf[comment_p - 1] == ord("-") and buf[comment_p - 2] == ord("-"):
                comment -= 1
                new_buf = comment_p + 1
                if not comment:
                    if process_buf is not None:
                        oldptr = process_buf + _strlen(buf, process_buf)
                        _memmove(buf, oldptr, new_buf, _strlen(buf, new_buf) + 1)
                        new_buf = oldptr
                    else:
                        process_buf = new_buf
            elif not comment:
                buf[comment_p] = 0
                new_buf = comment_p
            else:
                new_buf = comment_p + 1
        if process_buf is None:
            out[lineno] = None
        else:
            out[lineno] = bytes(buf[process_buf : process_buf + _strlen(buf, process_buf)]).strip(SPACE)


def _ours(text: str) -> dict[int, bytes]:
    scan = scan_comments(text)
    return {n: (line or "").encode().strip(SPACE) for n, line in enumerate(scan.lines, start=1)}


def _agree(text: str) -> None:
    if any(len(line.encode()) > MAX_LINE_BYTES for line in text.split("\n")):
        # Our scanner does not model Asterisk's skipping of long lines: the parser refuses them instead.
        with pytest.raises(InvalidInput, match="longer than"):
            parse_dialplan(text)
        return
    try:
        reference = reference_lines(text.encode())
    except AsteriskHangs:
        assert scan_comments(text).problems
        return
    ours = _ours(text)
    for number in sorted(set(reference) | set(ours)):
        theirs = reference.get(number) or b""
        assert ours.get(number, b"") == theirs, (number, text)


@pytest.mark.parametrize("text", [
    # The review's smuggling payload (X2): ';---' is a line comment for Asterisk, not a block start.
    "[smug-entry]\nexten => 1,1,Goto(smug-hidden,1,1)\n;---\n[smug-hidden]\nexten => 1,1,Answer()\n"
    " same => n,MixMonitor(/tmp/smug.wav,,/bin/sh -c 'id > /tmp/smug-pwned')\n; --;\n",
    ";-- ;-- --; --;\n[a]\nexten => 1,1,NoOp()\n",
    ";--\n;--\n--;\n[hidden]\n--;\n[a]\nexten => 1,1,NoOp()\n",
    "[a]\nexten => 1,1,NoOp(a--;b)\n[b]\n;--\nexten => 1,1,NoOp()\n",
    "[a]\n; note ;-- not a block\nexten => 1,1,NoOp()\n--;\n",
    "[a]\nexten => 1,1,No;-- x --;Op(\\;) ; c\n",
    "[a]\nexten => 1,1,NoOp(\\\\;x)\n\\;--\n;--;\n--;--;\n",
    "x" * 8190 + ";--\n[a]\nexten => 1,1,NoOp()\n",
])
def test_scanner_matches_the_reference_on_known_traps(text: str) -> None:
    _agree(text)


def test_the_smuggling_payload_is_refused_and_its_hidden_context_seen() -> None:
    text = ("[smug-entry]\nexten => 1,1,Goto(smug-hidden,1,1)\n;---\n[smug-hidden]\nexten => 1,1,Answer()\n"
            " same => n,MixMonitor(/tmp/smug.wav,,/bin/sh -c 'id > /tmp/smug-pwned')\n same => n,Wait(1)\n"
            " same => n,Hangup()\n; --;\n")
    assert "[smug-hidden]" in [line for line in scan_comments(text).lines]  # the scanner sees what Asterisk sees
    with pytest.raises(InvalidInput) as raised:
        parse_dialplan(text)
    assert raised.value.message.startswith("line 3:") and "';--'" in raised.value.message


TOKENS = [
    ";", ";--", "--;", ";---", "; --;", "\\;", "\\", ";-", "-", "--", "---;", " ", "\t", "x", "=>",
    "[a]", "[b]", "[from-trunk]", "[default]", "[smug-hidden]", "[ a]",
    "exten => 1,1,Answer()", "exten => 2,n,Dial(PJSIP/9@trunk-x)", " same => n,NoOp(a--;b)",
    " same => n,MixMonitor(/tmp/x.wav,,/bin/sh -c id)", "include => b", "exten => _X.,1,Hangup()",
    "#include /etc/passwd", "Playback(hello\\;world)", "n,Wait(1)",
]
LINE = st.lists(st.sampled_from(TOKENS), max_size=5).map("".join)
GRAMMAR_TEXT = st.lists(LINE, min_size=1, max_size=14).map(lambda lines: "\n".join(lines) + "\n")
RAW_TEXT = st.text(alphabet=";-\\ x[]=>#\n\tab(),", max_size=80)
STATEMENTS = st.sampled_from([
    "exten => 1,1,Answer()", "exten => 2,1,NoOp(x)", " same => n,Hangup()", "exten => 3,1,Dial(PJSIP/9@carrier)",
    "exten => 4,1,Dial(Local/1@a)", "exten => 5,1,MixMonitor(x)", "include => b", "exten => 6,1,Transfer(600)",
    " same => n,Playback(a\\;b)", "exten => 7,hint,PJSIP/x", "exten => _X.,1,Goto(b,s,1)",
])
DECORATIONS = st.sampled_from([
    "", "", "", "", "", "", " ; note", " ;-- x --;", ";---", "\n;--\n[h]\nexten => 9,1,System(id)\n--;",
    " ;-- ;-- --; --;",
    "\n; --;", " \\;--", "--;",
])


@st.composite
def structured(draw: st.DrawFn) -> str:
    """Mostly well-formed dialplans (so acceptance is exercised), decorated with comment traps."""
    out = []
    for context in draw(st.lists(st.sampled_from(["a", "b", "ivr-1", "from-trunk"]), min_size=1, max_size=3,
                                 unique=True)):
        out.append(f"[{context}]" + draw(DECORATIONS))
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            out.append(draw(STATEMENTS) + draw(DECORATIONS))
    return "\n".join(out) + "\n"


TEXTS = st.one_of(structured(), structured(), GRAMMAR_TEXT, RAW_TEXT)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXTS)
def test_fuzz_parser_agrees_with_asterisks_comment_rules(text: str) -> None:
    _agree(text)  # every line we call a comment is one for Asterisk, and the reverse
    try:
        parsed = parse_dialplan(text)
    except InvalidInput:
        return
    except EvaError as exc:  # only our own input errors, never another kind
        raise AssertionError(f"unexpected {exc!r}") from exc
    # Accepted: nothing Asterisk will load is invisible to the checks.
    reference = reference_lines(text.encode())
    headers = [line.decode() for line in reference.values() if line and line.startswith(b"[")]
    assert [f"[{c}]" for c in parsed.contexts] == headers
    seen = {n for lines in parsed.priorities.values() for n in lines}
    for number, line in reference.items():
        if line and line.split(b"=", 1)[0].strip(SPACE).lower() in (b"exten", b"same"):
            assert number in seen or b",hint," in line.replace(b" ", b""), (number, text)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=300))
def test_deep_nesting_is_refused_before_asterisk_would_hang(depth: int) -> None:
    text = ";-- " * depth + "\n[a]\nexten => 1,1,NoOp()\n" + "--; " * depth + "\n"
    _agree(text)
    if depth > 8:
        with pytest.raises(InvalidInput, match="nested"):
            parse_dialplan(text)


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(TEXTS, st.booleans())
def test_fuzz_dialplan_put_answers_only_4xx(tmp_path: Path, text: str, admin: bool) -> None:
    """The whole PUT path (offline: no Asterisk) on generated texts: accepted, or one of our 4xx errors;
    what it accepts is what it stores."""
    service = DialplanService(AsteriskLink(offline_settings(tmp_path / "data"), None))
    try:
        saved = asyncio.run(service.put("fuzz", text, outbound=admin))
    except EvaError as exc:
        assert 400 <= exc.http_status < 500, exc
        event(f"refused {exc.http_status}")
        return
    event("accepted")
    stored = (tmp_path / "data" / "dialplan" / "fuzz.conf").read_text()
    assert saved["content"] == stored == (text if text.endswith("\n") else text + "\n")
