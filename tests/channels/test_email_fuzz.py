"""Fuzzing the inbound e-mail parser (``parse_email`` and the text extraction under it) with hypothesis: arbitrary
bytes, generated headers (encoded words in odd charsets, folding, broken addresses), nested multiparts with odd
charsets and transfer encodings, and text full of quote markers.  Only our own error (InvalidInput) may come out,
and what comes out is bounded."""

from __future__ import annotations

import base64
import quopri

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.email.message import (
    MAX_RECIPIENTS,
    MAX_REFERENCES,
    MAX_SUBJECT,
    MAX_TEXT,
    InboundEmail,
    build_reply,
    html_to_text,
    parse_email,
    strip_courtesies,
    strip_quoted,
)
from voicebot.errors import InvalidInput

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ATOMS = st.sampled_from([
    "On", "Am", "wrote", "schrieb", ":", ">", "--", "-- ", "-----Original Message-----", "From:", "Sent:",
    "Subject:", "=?utf-8?q?J=C3=BC?=", "=?", "?=", "=?punycode?b?YWJj?=", "=?utf-7?q?+AGE-?=", "=?x-unknown?b?AAAA?=",
    "=?iso-8859-1?q?F=FC?=", "=?utf-16?b?//4A?=", "<", "@", '"', "\\", "(", ")", ",", ";", "\r\n", "\r\n ", "\n",
    " ", "\t", "=", "\x00", "\x7f", "é", "ü", "\u2028", "😀", "Re:", "boundary=", "multipart/mixed", "base64",
    "<m@x>", "a@b.c", "Ada <ada@example.org>", "<gmail_quote>", "&amp;", "&#x10ffff;", "&#0;", "<br>", "<div>",
])
TEXT = st.lists(st.one_of(ATOMS, st.text(max_size=12)), max_size=24).map("".join)
HEADER_NAMES = st.sampled_from([
    "From", "To", "Cc", "Reply-To", "Subject", "Message-ID", "In-Reply-To", "References", "Content-Type",
    "Content-Transfer-Encoding", "MIME-Version", "Auto-Submitted", "Precedence", "List-Id", "Date", "X-Odd",
    "Content-Disposition", "From ", ":", "",
])
CHARSETS = st.sampled_from([
    "utf-8", "iso-8859-1", "utf-16", "utf-32", "utf-7", "punycode", "idna", "x-unknown", "", "cp1252", "shift_jis",
    "zlib", "base64", "rot13", "uu", "unicode_escape", "ascii", '"utf-8', "utf-8\x00",
])
ENCODINGS = st.sampled_from(["", "7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "garbage"])
SUBTYPES = st.sampled_from(["plain", "html", "enriched", "", "x-weird"])


def header_lines(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("utf-8", "surrogatepass") for name, value in headers)


@st.composite
def leaves(draw: st.DrawFn) -> bytes:
    subtype, charset, encoding = draw(SUBTYPES), draw(CHARSETS), draw(ENCODINGS)
    body = draw(st.one_of(st.binary(max_size=200), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))))
    if encoding == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body)
    elif encoding == "quoted-printable" and draw(st.booleans()):
        body = quopri.encodestring(body)
    head = [("Content-Type", f"text/{subtype}; charset={charset}")]
    if encoding:
        head.append(("Content-Transfer-Encoding", encoding))
    return header_lines(head + draw(st.lists(st.tuples(HEADER_NAMES, TEXT), max_size=2))) + b"\r\n" + body


@st.composite
def multiparts(draw: st.DrawFn, children: st.SearchStrategy[bytes]) -> bytes:
    boundary = draw(st.text(alphabet="abc=-_ '", min_size=0, max_size=8))
    parts = draw(st.lists(children, max_size=4))
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "digest", "x-odd"]))
    closed = draw(st.booleans())
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    if closed:
        body += b"--" + boundary.encode() + b"--\r\n"
    return header_lines([("Content-Type", f'multipart/{subtype}; boundary="{boundary}"')]) + b"\r\n" + body


BODIES = st.recursive(leaves(), multiparts, max_leaves=10)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(HEADER_NAMES, TEXT), max_size=10))
    if draw(st.booleans()):
        headers.insert(0, ("From", draw(st.sampled_from(["Ada <ada@example.org>", "a@b", "=?utf-8?q?J=C3=BC?= <j@x.de>",
                                                         "<@>", "x@y@z", '"\\" <q@x>']))))
    depth = draw(st.sampled_from([0, 0, 0, 1, 5, 1500]))  # now and then deeper than the stdlib can recurse
    nest = b"".join(b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (i, i) for i in range(depth))
    return header_lines(headers) + nest + draw(BODIES)


def assert_bounded(parsed: InboundEmail) -> None:
    assert len(parsed.text) <= MAX_TEXT and len(parsed.subject) <= MAX_SUBJECT
    assert len(parsed.sender) <= 320 and "@" in parsed.sender and len(parsed.sender_name) <= 200
    assert len(parsed.message_id) <= 255 and len(parsed.in_reply_to) <= 255
    assert len(parsed.references) <= MAX_REFERENCES and all(len(r) <= 255 for r in parsed.references)
    assert len(parsed.to) <= MAX_RECIPIENTS and len(parsed.reply_to_header) <= 320
    # The reply to whatever was accepted can be built and serialised.
    build_reply(parsed, "We can help.", sender="Eva <eva@shop.example>").as_bytes()


def parse_or_refuse(raw: bytes) -> None:
    try:
        parsed = parse_email(raw)
    except InvalidInput as exc:
        assert exc.code in ("invalid_input", "email_too_large", "email_unparseable"), exc.code
        return
    assert_bounded(parsed)


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(raw: bytes) -> None:
    parse_or_refuse(raw)


@FUZZ
@given(st.binary(max_size=1024))
def test_arbitrary_bytes_after_valid_headers(tail: bytes) -> None:
    parse_or_refuse(b"From: ada@example.org\r\nMessage-ID: <f@x>\r\n" + tail)


@FUZZ
@given(messages())
def test_generated_messages(raw: bytes) -> None:
    parse_or_refuse(raw)


@FUZZ
@given(TEXT, st.integers(min_value=1, max_value=3))
def test_quote_stripping_is_bounded(text: str, copies: int) -> None:
    body = "\n".join([text] * copies)
    stripped = strip_quoted(body)
    assert len(stripped) <= len(body)
    assert len(strip_courtesies(stripped)) <= len(stripped)


@FUZZ
@given(st.lists(st.one_of(ATOMS, st.sampled_from(["<a ", "</", "<!--", "-->", "<![CDATA[", "]]>", "<script>",
                                                  "</script>", "<style", "'", "<p class=gmail_quote>", "</p>",
                                                  "<blockquote>", "</blockquote>", "<?", "<!"]),
                          st.text(max_size=8)), max_size=40).map("".join))
def test_html_to_text_is_bounded(markup: str) -> None:
    assert len(html_to_text(markup)) <= len(markup)
