"""Pure e-mail codecs (stdlib ``email`` package): an inbound message reduced to what the agent should read, and
the reply that threads under it.  No I/O here.

What the agent reads: the ``text/plain`` body when there is one, else the ``text/html`` body as text; attachments
are never read (the service may show it their names).  The quoted history a mail client appends ("On Mon, …
wrote:" and ``>`` lines, Outlook's "-----Original Message-----" block, Gmail's ``gmail_quote``/``<blockquote>``)
and the signature after ``-- `` are removed, because the conversation memory already holds the earlier turns.

Mail is untrusted input from anyone on the internet, so every step here is linear in the size of the message and
bounded: the message (:data:`MAX_MESSAGE_BYTES`) and its header section are capped, the body read is cut at
:data:`MAX_BODY_CHARS`, HTML at :data:`MAX_HTML_CHARS`, the text handed on at :data:`MAX_TEXT`, and the quote
markers are found by plain string tests plus patterns without nested unbounded repetition (the earlier
``^On.*wrote.*:$`` patterns took minutes on one long line).  The only error :func:`parse_email` raises is
:class:`~voicebot.errors.InvalidInput`.  The service still runs it in a separate process with a time and memory
limit (:mod:`channels.email.parse_worker`): the stdlib parsers are not ours to prove linear.

Attachments (:func:`extract_attachments`): every leaf part that is not the body is one, except text parts with no
file name that are not marked ``attachment`` (the other alternative of the body, footers a list appends).  Parts
with a Content-ID that are not marked ``attachment`` are the HTML body's inline images (signature logos, pasted
screenshots): they are listed and kept too, with ``note: "inline"`` (a pasted screenshot may be the point of the
mail, and a logo costs one file per conversation: files are stored by content), after the real attachments in
the count, and never named to the agent.  A forwarded message (``message/rfc822``) is one attachment (an
``.eml``), not walked into.  Bounds: at most :data:`MAX_LISTED_ATTACHMENTS` listed; of those the first
:data:`MAX_ATTACHMENTS` that are each within ``attachment_max_bytes`` and together within the message limit
carry their bytes, the others only their name, type, size and hash (``note``: ``too_many`` or ``too_large``).
The file name is only data: cleaned with :func:`channels.attachments.clean_name`, never part of a path.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.policy
import hashlib
import html
import mimetypes
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from typing import Any

from channels.attachments import clean_name
from voicebot.errors import InvalidInput

MAX_SUBJECT = 200
"""Characters of a subject kept (a longer one is cut; headers fold anyway)."""
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
"""The largest message parsed by default (the service passes EVA_EMAIL_MAX_BYTES)."""
MAX_HEADER_BYTES = 256 * 1024
"""The largest header section: real mail carries a few KB; the stdlib header parser is the slow part."""
MAX_HEADER_VALUE = 4_096
"""Characters of one header value parsed (see :class:`_BoundedPolicy`)."""
MAX_BODY_CHARS = 200_000
"""Characters of the chosen body part read at all (the new text is at the top of a reply)."""
MAX_HTML_CHARS = 1_000_000
"""Characters of an HTML body converted to text."""
MAX_TEXT = 20_000
"""Characters of new text handed on (the agent reads far less)."""
MAX_MULTIPARTS = 32
"""Multipart sections a message may declare.  The stdlib parser's work grows with the nesting depth times the
lines (each line is tested against every open boundary) and it recurses per level: real mail nests a few deep."""
MAX_DELIMITERS = 400
"""Lines starting with ``--`` (MIME part delimiters, at most) a message may have: each part's headers are parsed,
and real mail has a few dozen parts at most."""
MAX_REFERENCES = 20
"""Message-IDs of References kept: the root and the nearest ancestors (each one is a database lookup key)."""
MAX_RECIPIENTS = 50
"""Addresses kept of each of To, Cc and Delivered-To (also of the header instances read)."""
MAX_ATTACHMENTS = 20
"""Attachments of one message whose bytes are kept."""
MAX_LISTED_ATTACHMENTS = 50
"""Attachments of one message listed at all (beyond :data:`MAX_ATTACHMENTS` with ``note: too_many``)."""
MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
"""The largest attachment kept by default (the service passes EVA_EMAIL_ATTACHMENT_MAX_BYTES)."""
MAX_OUTGOING_ATTACHMENTS = 10
"""Files one sent e-mail may carry (together at most EVA_EMAIL_ATTACHMENT_MAX_BYTES)."""
MAX_FILENAME_CHARS = 1_000
"""Characters of a file name looked at before it is cleaned (its start and its end, where the extension is); the
cleaned name is shorter still."""
MAX_MARKER_LINE = 1_000
"""A line longer than this is never a quote marker ("On … wrote:", a separator, a header): marker lines are short,
and skipping long ones keeps every test on them cheap."""
MAX_COURTESY_LINE = 200
"""A greeting or sign-off line is short."""
_UNSAFE_CODECS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape", "utf-7"})
"""Codecs no mail charset should name: super-linear decoders (punycode, idna), Python's escape decoders (they
interpret the sender's backslashes and warn on bad ones) and UTF-7 (a classic way to smuggle markup);
a body declared in them is read as UTF-8 instead."""

_MSGID_RE = re.compile(r"<[^<>\s]+>")
_CONTENT_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
"""A plain ``type/subtype`` (what the stdlib gives back lower-cased); anything else is application/octet-stream."""
# One whitespace run per prefix (two adjacent \s* would split a run every possible way).
_REPLY_PREFIX_RE = re.compile(r"^\s*((re|aw|sv|antw|fwd?|wg)\s*(\[\d+\]\s*)?:\s*)+", re.IGNORECASE)
# "On <date>, <name> wrote:" and its translations (the verb may come before the name: "Am …, schrieb X:").
# Found without ".*": the opening word is matched at the start, the colon tested with endswith(), and the verb
# searched between them (a literal alternation: linear).
_VERB_RE = re.compile(r"\b(wrote|schrieb|a écrit|escribió|ha scritto|schreef)\b", re.IGNORECASE)
_ATTRIBUTION_OPEN_RE = re.compile(r"\s*(On|Am|Le|El|Il|Op)\b", re.IGNORECASE)
_ATTRIBUTION_START_RE = re.compile(r"\s*(On|Am|Le|El|Il|Op)\s", re.IGNORECASE)
_SEPARATOR_RE = re.compile(
    r"^\s*(-{2,}\s*(Original Message|Ursprüngliche Nachricht|Message d'origine|Forwarded message)\s*-{2,}|_{10,})\s*$",
    re.IGNORECASE)
_HEADER_BLOCK_RE = re.compile(r"^\s*(From|Von|De)\s*:\s*\S", re.IGNORECASE)
_GREETING_RE = re.compile(r"^\s*(hi|hello|hey|dear|good (morning|afternoon|evening)|hallo|guten tag|bonjour|hola)"
                          r"\b[^.?!\n]{0,40}[,!:]?\s*$", re.IGNORECASE)
_SIGNOFF_RE = re.compile(
    r"^\s*(thanks?( you)?( (so|very) much)?( in advance)?|many thanks|thx|cheers|best( wishes| regards)?|"
    r"(kind|warm|best) regards|regards|sincerely|yours( truly| sincerely)?|greetings|all the best|"
    r"(viele|beste|liebe) grüße|mit freundlichen grüßen|danke|cordialement|saludos)[\s,.!]*$", re.IGNORECASE)


@dataclass(frozen=True)
class MailAttachment:
    """One attachment of an inbound message.  ``data`` is None when it is only listed (see ``note``)."""

    name: str
    """The sender's file name, cleaned (:func:`channels.attachments.clean_name`): data, never a path."""
    content_type: str
    """A plain ``type/subtype``."""
    size: int
    """Decoded bytes."""
    sha256: str
    data: bytes | None
    note: str = ""
    """``inline`` (an image of the HTML body; kept), ``too_large``, ``too_many`` or ``unreadable`` (not kept)."""


@dataclass(frozen=True)
class OutgoingFile:
    """A file to attach to an outbound message."""

    name: str
    content_type: str
    data: bytes

    @classmethod
    def of(cls, name: str, content_type: str, data: bytes) -> OutgoingFile:
        """The file with its name cleaned (no path, no control characters: it goes into a header) and its type a
        plain ``type/subtype`` (else application/octet-stream)."""
        content_type = content_type.strip().lower()
        if not _CONTENT_TYPE_RE.fullmatch(content_type):
            content_type = "application/octet-stream"
        return cls(clean_name(_bounded_name(name), fallback="attachment"), content_type, data)


@dataclass(frozen=True)
class InboundEmail:
    """An e-mail as the channel needs it."""

    message_id: str
    """``<...>``; synthesised from a hash of the message when the header is missing."""
    in_reply_to: str
    references: tuple[str, ...]
    sender: str
    """The From address, lower-cased."""
    sender_name: str
    reply_to_header: str
    """The Reply-To address, lower-cased ('' when absent).  Only logged: the answer always goes to :attr:`sender`,
    the contact whose conversation memory wrote it (F4: From victim + Reply-To attacker must not mail the victim's
    history to the attacker).  Nothing here authenticates From either; replying to it at least sends what is
    known about an address only to that address."""
    to: tuple[str, ...]
    subject: str
    text: str
    """The new text of the message (quotes, signature and attachments removed)."""
    auto_generated: bool
    """An auto-reply, a bounce or list mail: never answered (mail loops)."""
    cc: tuple[str, ...] = ()
    delivered_to: tuple[str, ...] = ()
    """Delivered-To and X-Original-To: written by the receiving mail server, not the sender."""
    attachments: tuple[MailAttachment, ...] = ()

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every address the message was for, lower-cased: Delivered-To first (the receiving server says so), then
        To, then Cc (the sender says so)."""
        seen: dict[str, None] = {}
        for address in (*self.delivered_to, *self.to, *self.cc):
            seen.setdefault(address, None)
        return tuple(seen)

    @property
    def thread_ids(self) -> list[str]:
        """Message-IDs this message answers, nearest first."""
        ids = [self.in_reply_to] if self.in_reply_to else []
        ids += [r for r in reversed(self.references) if r not in ids]
        return ids

    @property
    def thread_root(self) -> str:
        return self.references[0] if self.references else (self.in_reply_to or self.message_id)


def parse_email(raw: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES,
                attachment_max_bytes: int = MAX_ATTACHMENT_BYTES) -> InboundEmail:
    """Parse a whole RFC 5322 message.  InvalidInput (and only that) when it is larger than ``max_bytes``, its
    header section is too large, it cannot be parsed, or it has no usable From address.  Attachments larger than
    ``attachment_max_bytes`` are listed without their bytes."""
    if len(raw) > max_bytes:
        raise InvalidInput(f"the e-mail is {len(raw)} bytes, more than the {max_bytes} allowed",
                           code="email_too_large")
    if _header_section_size(raw) > MAX_HEADER_BYTES:
        raise InvalidInput(f"the e-mail's headers are more than {MAX_HEADER_BYTES} bytes", code="email_too_large")
    if raw.lower().count(b"multipart/") > MAX_MULTIPARTS:
        raise InvalidInput(f"the e-mail has more than {MAX_MULTIPARTS} multipart sections", code="email_unparseable")
    if raw.count(b"\n--") > MAX_DELIMITERS:
        raise InvalidInput(f"the e-mail has more than {MAX_DELIMITERS} MIME part delimiters", code="email_unparseable")
    try:
        return _parse(raw, max_bytes, attachment_max_bytes)
    except RecursionError as exc:  # the stdlib walks nested multiparts recursively
        raise InvalidInput("the e-mail's MIME parts are nested too deeply", code="email_unparseable") from exc
    except (ValueError, LookupError, TypeError, AttributeError, IndexError, email.errors.MessageError) as exc:
        # Hostile input that trips the stdlib parser: the mail is refused with a reason, the poller lives on.
        raise InvalidInput(f"the e-mail cannot be parsed ({type(exc).__name__})", code="email_unparseable") from exc


def _printable(text: str) -> bool:
    """No whitespace, control, format or unassigned characters in ``text``."""
    return not any(c.isspace() or unicodedata.category(c)[0] == "C" for c in text)


def _header_section_size(raw: bytes) -> int:
    end = raw.find(b"\n\n")
    crlf = raw.find(b"\r\n\r\n")
    ends = [e for e in (end, crlf) if e >= 0]
    return min(ends) if ends else len(raw)


def _parse(raw: bytes, max_bytes: int, attachment_max_bytes: int) -> InboundEmail:
    message = email.message_from_bytes(raw, policy=_POLICY)
    assert isinstance(message, EmailMessage)
    name, sender = parseaddr(_header(message, "From"))
    sender = sender.strip().lower()
    if "@" not in sender or len(sender) > 320 or not _printable(sender):
        # Whitespace or a control character in it (a vertical tab, U+2028...) would break the reply's To header.
        raise InvalidInput("the e-mail has no usable sender address", field="From")
    message_ids = _MSGID_RE.findall(_header(message, "Message-ID"))
    message_id = message_ids[0] if message_ids else f"<{hashlib.sha256(raw).hexdigest()[:40]}@eva.invalid>"
    in_reply_to = _MSGID_RE.findall(_header(message, "In-Reply-To"))
    references = [r[:255] for r in _MSGID_RE.findall(_header(message, "References"))]
    if len(references) > MAX_REFERENCES:
        references = references[:1] + references[-(MAX_REFERENCES - 1):]
    _reply_name, reply_to = parseaddr(_header(message, "Reply-To"))
    return InboundEmail(
        message_id=message_id[:255],
        in_reply_to=in_reply_to[0][:255] if in_reply_to else "",
        references=tuple(references),
        sender=sender,
        sender_name=" ".join("".join(c for c in name if _printable(c) or c.isspace()).split())[:200],
        reply_to_header=reply_to.strip().lower()[:320] if "@" in reply_to else "",
        to=_addresses(message, "To"),
        subject=" ".join(_header(message, "Subject")[:MAX_SUBJECT * 4].split())[:MAX_SUBJECT],
        text=extract_text(message),
        auto_generated=_auto_generated(message, sender),
        cc=_addresses(message, "Cc"),
        delivered_to=_addresses(message, "Delivered-To", "X-Original-To"),
        attachments=extract_attachments(message, max_each=attachment_max_bytes, max_total=max_bytes),
    )


def _addresses(message: EmailMessage, *names: str) -> tuple[str, ...]:
    """The distinct addresses of these headers, lower-cased, at most :data:`MAX_RECIPIENTS`; ones that could not be
    a recipient (no ``@``, whitespace or control characters, too long) are left out."""
    values = [value for name in names for value in _all_headers(message, name)[:MAX_RECIPIENTS]]
    found: dict[str, None] = {}
    for _name, raw in getaddresses(values):
        address = raw.strip().lower()
        if "@" in address and len(address) <= 320 and _printable(address):
            found.setdefault(address, None)
            if len(found) >= MAX_RECIPIENTS:
                break
    return tuple(found)


class _BoundedPolicy(email.policy.EmailPolicy):
    """``email.policy.default`` that parses at most :data:`MAX_HEADER_VALUE` characters of any header value.

    The structured header parser is super-linear on hostile values (a part's Content-Type with 8,000 parameters
    took 11 s), and it runs on every part's headers while the message is read, not only on the ones we ask for.
    No header Eva reads is longer in real mail; of References the start (the root) and the end (the nearest
    ancestors) are kept."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if isinstance(value, str) and len(value) > MAX_HEADER_VALUE:
            if name.lower() == "references":
                value = value[:MAX_HEADER_VALUE // 8] + " " + value[-(MAX_HEADER_VALUE - MAX_HEADER_VALUE // 8):]
            else:
                value = value[:MAX_HEADER_VALUE]
        return super().header_fetch_parse(name, value)


_POLICY = _BoundedPolicy()


def _header(message: EmailMessage, name: str) -> str:
    return str(message.get(name, ""))


def _all_headers(message: EmailMessage, name: str) -> list[str]:
    return [str(value) for value in message.get_all(name, [])]


def _auto_generated(message: EmailMessage, sender: str) -> bool:
    auto = _header(message, "Auto-Submitted").strip().lower()
    precedence = _header(message, "Precedence").strip().lower()
    local = sender.split("@", 1)[0].lower()
    return (auto not in ("", "no") or precedence in ("bulk", "junk", "list", "auto_reply")
            or "List-Id" in message or "X-Autoreply" in message or "X-Autorespond" in message
            or local in ("mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply"))


def extract_text(message: EmailMessage) -> str:
    """The readable new text of ``message`` (at most :data:`MAX_TEXT` characters): plain text preferred, HTML
    converted, quotes removed."""
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    if body.get_content_subtype() == "html":
        content = html_to_text(_decoded(body, MAX_HTML_CHARS))
    else:
        content = _decoded(body, MAX_BODY_CHARS)
    return strip_courtesies(strip_quoted(content[:MAX_BODY_CHARS]))[:MAX_TEXT]


_PART_ERRORS = (ValueError, LookupError, TypeError, AttributeError, IndexError, UnicodeError,
                email.errors.MessageError)
"""What the stdlib may raise reading one hostile part: that part is listed as well as it can be, the mail lives."""


def extract_attachments(message: EmailMessage, *, max_each: int = MAX_ATTACHMENT_BYTES,
                        max_total: int = MAX_MESSAGE_BYTES) -> tuple[MailAttachment, ...]:
    """The attachments of ``message`` (see the module docstring for which parts are, and the bounds)."""
    body = message.get_body(preferencelist=("plain", "html"))
    files: list[MIMEPart] = []
    inline: list[MIMEPart] = []
    # Depth first, in the order of the message, without recursion (multiparts are already capped in number).
    stack: list[MIMEPart] = [message]
    while stack:
        part = stack.pop()
        content_type = part.get_content_type()
        if part.is_multipart() and content_type != "message/rfc822":
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(reversed([c for c in children if isinstance(c, MIMEPart)]))
            continue
        if part is body or content_type.startswith("multipart/"):
            continue
        disposition = _safely(part.get_content_disposition)
        if disposition != "attachment" and part.get("Content-ID") is not None:
            inline.append(part)
        elif (disposition == "attachment" or not content_type.startswith("text/")
              or _safely(part.get_filename) is not None):
            files.append(part)
    listed: list[MailAttachment] = []
    total = 0
    for index, part in enumerate((files + inline)[:MAX_LISTED_ATTACHMENTS]):
        found = _attachment(part, note="inline" if index >= len(files) else "")
        if found.data is None:  # unreadable: listed as it is
            listed.append(found)
            continue
        if index >= MAX_ATTACHMENTS:
            found = MailAttachment(found.name, found.content_type, found.size, found.sha256, None, "too_many")
        elif found.size > max_each or total + found.size > max_total:
            found = MailAttachment(found.name, found.content_type, found.size, found.sha256, None, "too_large")
        else:
            total += found.size
        listed.append(found)
    return tuple(listed)


def _bounded_name(name: str) -> str:
    """At most :data:`MAX_FILENAME_CHARS` of ``name``: its start and its end (the extension)."""
    half = MAX_FILENAME_CHARS // 2
    return name if len(name) <= MAX_FILENAME_CHARS else name[:half] + name[-half:]


def _safely(read: Any) -> Any:
    """``read()``, or None when the part's headers are too broken to say."""
    try:
        return read()
    except _PART_ERRORS:
        return None


def _attachment(part: MIMEPart, *, note: str) -> MailAttachment:
    """One part as an attachment: its cleaned name and type and its decoded bytes (None when unreadable)."""
    content_type = part.get_content_type()
    if not _CONTENT_TYPE_RE.fullmatch(content_type):
        content_type = "application/octet-stream"
    filename = _safely(part.get_filename)
    fallback = "forwarded.eml" if content_type == "message/rfc822" else \
        "attachment" + (mimetypes.guess_extension(content_type) or ".bin")
    name = clean_name(_bounded_name(str(filename)) if filename is not None else "", fallback=fallback)
    data: bytes | None
    try:
        if content_type == "message/rfc822":
            inner = part.get_payload(0)
            data = inner.as_bytes() if isinstance(inner, EmailMessage) else None
        else:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
    except _PART_ERRORS:
        data = None
    if data is None:
        return MailAttachment(name, content_type, 0, "", None, "unreadable")
    return MailAttachment(name, content_type, len(data), hashlib.sha256(data).hexdigest(), data, note)


def _decoded(part: MIMEPart, limit: int) -> str:
    """The part's text, at most ``limit`` characters, in its declared charset when that is a safe text codec."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    # Four bytes per character at most in any charset mail uses: decode no more than the limit can need.
    payload = payload[:limit * 4]
    charset = part.get_content_charset("utf-8") or "utf-8"
    try:
        codec = codecs.lookup(charset)
        if codec.name in _UNSAFE_CODECS or not getattr(codec, "_is_text_encoding", True):
            codec = codecs.lookup("utf-8")
        return codec.decode(payload, "replace")[0][:limit]
    except (LookupError, UnicodeError, ValueError, TypeError):
        # An unknown or wrong charset: the bytes as well as they decode.
        return payload.decode("utf-8", errors="replace")[:limit]


_TAG_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9:_-]*")
_ATTR_NAME_RE = re.compile(r"[^\s/>=]+")
_SPACE_RE = re.compile(r"[\s/]*")
_EQUALS_RE = re.compile(r"\s*=\s*")
_UNQUOTED_RE = re.compile(r"[^\s>]*")
_RAW_TEXT_END = {"script": re.compile(r"</script", re.IGNORECASE), "style": re.compile(r"</style", re.IGNORECASE)}
_MAX_ATTRIBUTES = 64
HtmlToken = tuple[str, str, list[tuple[str, str | None]]]


def _html_tokens(markup: str) -> Iterator[HtmlToken]:
    """("data", text, []), ("start", tag, attributes) and ("end", tag, []) of ``markup``, in one forward pass.

    Written here rather than taken from ``html.parser`` because that one is quadratic on hostile markup (25 s for
    30 KB of ``<a ``): every search below either finds its end or consumes the rest of the document, so no
    character is looked at more than a few times.  Sloppy HTML is read as browsers roughly do; what matters is
    the text, not a faithful tree."""
    n, i = len(markup), 0
    while i < n:
        lt = markup.find("<", i)
        if lt < 0:
            yield "data", markup[i:], []
            return
        if lt > i:
            yield "data", markup[i:lt], []
        i = lt
        for opener, closer in (("<!--", "-->"), ("<![CDATA[", "]]>"), ("<!", ">"), ("<?", ">")):
            if markup.startswith(opener, i):
                end = markup.find(closer, i + len(opener))
                i = n if end < 0 else end + len(closer)
                break
        else:
            closing = markup.startswith("</", i)
            name = _TAG_NAME_RE.match(markup, i + (2 if closing else 1))
            if name is None:  # a "<" that opens no tag is text
                yield "data", "<", []
                i += 1
                continue
            tag = name.group().lower()
            attributes, i = _html_attributes(markup, name.end())
            if closing:
                yield "end", tag, []
                continue
            yield "start", tag, attributes
            raw_end = _RAW_TEXT_END.get(tag)
            if raw_end is not None:  # script and style: nothing inside is markup
                found = raw_end.search(markup, i)
                i = n if found is None else found.start()


def _html_attributes(markup: str, i: int) -> tuple[list[tuple[str, str | None]], int]:
    """The attributes of a tag from ``i`` and the position after its ``>`` (the end when it has none)."""
    n = len(markup)
    attributes: list[tuple[str, str | None]] = []
    while i < n:
        i = _SPACE_RE.match(markup, i).end()  # type: ignore[union-attr]  # [\s/]* always matches
        if i >= n:
            break
        if markup[i] == ">":
            return attributes, i + 1
        name = _ATTR_NAME_RE.match(markup, i)
        if name is None:  # a stray "="
            i += 1
            continue
        key, i = name.group().lower(), name.end()
        value: str | None = None
        equals = _EQUALS_RE.match(markup, i)
        if equals is not None:
            i = equals.end()
            if i < n and markup[i] in "\"'":
                end = markup.find(markup[i], i + 1)
                value, i = (markup[i + 1:], n) if end < 0 else (markup[i + 1:end], end + 1)
            else:
                unquoted = _UNQUOTED_RE.match(markup, i)
                assert unquoted is not None  # [^\s>]* always matches
                value, i = unquoted.group(), unquoted.end()
        if len(attributes) < _MAX_ATTRIBUTES:
            attributes.append((key, value))
    return attributes, n


class _TextExtractor:
    """HTML to plain text: block elements become line breaks; scripts, styles and quoted history are dropped.
    Open tags are counted as well as stacked, so a closing tag never scans the stack (deeply nested markup stays
    linear)."""

    _SKIP = frozenset({"script", "style", "head", "title", "blockquote"})
    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
                        "hr", "pre", "section", "article"})

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.skip_depth = 0
        self._stack: list[str] = []
        self._open: dict[str, int] = {}

    def feed(self, markup: str) -> None:
        for kind, value, attributes in _html_tokens(markup):
            if kind == "data":
                self.handle_data(value)
            elif kind == "start":
                self.handle_starttag(value, attributes)
            else:
                self.handle_endtag(value)

    def _push(self, tag: str) -> None:
        self._stack.append(tag)
        self._open[tag] = self._open.get(tag, 0) + 1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = " ".join(v or "" for k, v in attrs if k == "class")
        quoted = "gmail_quote" in classes or "moz-cite-prefix" in classes or "divRplyFwdMsg" in " ".join(
            v or "" for k, v in attrs if k == "id")
        if tag in ("br", "hr", "img", "meta", "link", "input"):  # void elements have no end tag
            if tag in self._BLOCK and not self.skip_depth:
                self.parts.append("\n")
            return
        if self.skip_depth or tag in self._SKIP or quoted:
            self.skip_depth += 1
            self._push(tag)
            return
        self._push(tag)
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if not self._open.get(tag):
            return
        while self._stack:  # close everything left open inside (sloppy HTML)
            open_tag = self._stack.pop()
            self._open[open_tag] -= 1
            if self.skip_depth:
                self.skip_depth -= 1
            if open_tag == tag:
                break
        if tag in self._BLOCK and not self.skip_depth:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """The text of an HTML body (the first :data:`MAX_HTML_CHARS` characters of it)."""
    parser = _TextExtractor()
    parser.feed(markup[:MAX_HTML_CHARS])
    text = html.unescape("".join(parser.parts)).replace("\xa0", " ")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _is_attribution(line: str) -> bool:
    """``On <date>, <name> wrote:`` on one line."""
    if len(line) > MAX_MARKER_LINE:
        return False
    opening = _ATTRIBUTION_OPEN_RE.match(line)
    body = line.rstrip()
    return (opening is not None and body.endswith(":")
            and _VERB_RE.search(body, opening.end(), len(body) - 1) is not None)


def _ends_attribution(line: str) -> bool:
    """The second line of an attribution wrapped in two: ``<name> wrote:``."""
    body = line.rstrip()
    return (len(line) <= MAX_MARKER_LINE and body.endswith(":") and not line.lstrip().startswith(">")
            and _VERB_RE.search(body, 0, len(body) - 1) is not None)


def strip_quoted(text: str) -> str:
    """Remove the quoted history and the signature a reply carries below (or around) the new text."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        if line.rstrip() == "--" and line.startswith("--"):  # "-- " signature separator (RFC 3676)
            break
        short = len(line) <= MAX_MARKER_LINE
        if _is_attribution(line) or (short and _SEPARATOR_RE.match(line)):
            break
        if short and _ATTRIBUTION_START_RE.match(line) and index + 1 < len(lines) and \
                _ends_attribution(lines[index + 1]):
            break  # an attribution line wrapped in two
        if short and _HEADER_BLOCK_RE.match(line) and kept and not kept[-1].strip() and \
                _looks_like_header_block(lines, index):
            break  # Outlook's quoted header block without a separator line
        if line.lstrip().startswith(">"):
            continue
        kept.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def strip_courtesies(text: str) -> str:
    """Drop a greeting line ("Hello Eva,") before and a sign-off ("Thanks,\\nAda") after the message: they are
    not part of the question, and small models take them for one (answering "Thanks, Ada" with small talk)."""
    lines = text.split("\n")
    content = [i for i, line in enumerate(lines) if line.strip()]
    if len(content) < 2:
        return text
    first = lines[content[0]]
    if len(first) <= MAX_COURTESY_LINE and _GREETING_RE.match(first):
        lines[content[0]] = ""
        content = content[1:]
    # A sign-off is one of the last lines, followed only by a short name (no sentence after it).
    for position in range(max(1, len(content) - 3), len(content)):
        index = content[position]
        after = [lines[i].strip() for i in content[position + 1:]]
        if len(lines[index]) <= MAX_COURTESY_LINE and _SIGNOFF_RE.match(lines[index]) and \
                all(len(a) <= 40 and len(a.split()) <= 4 for a in after):
            lines = lines[:index]
            break
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _looks_like_header_block(lines: list[str], index: int) -> bool:
    following = " ".join(line[:MAX_MARKER_LINE] for line in lines[index:index + 5]).lower()
    return ("sent:" in following or "gesendet:" in following or "date:" in following) and (
        "subject:" in following or "betreff:" in following)


def reply_subject(subject: str) -> str:
    """``Re: <subject>`` without piling up prefixes (``Re: Re: AW:``)."""
    base = _REPLY_PREFIX_RE.sub("", subject).strip()
    return f"Re: {base}" if base else "Re: your message"


def new_message_id(sender: str) -> str:
    """A fresh Message-ID in the sender's domain (``sender`` may carry a display name)."""
    address = parseaddr(sender)[1] or sender
    domain = address.rsplit("@", 1)[-1] if "@" in address else "eva.invalid"
    return make_msgid(domain=domain)


def build_message(*, sender: str, to: str, subject: str, body: str, in_reply_to: str = "",
                  references: tuple[str, ...] = (), message_id: str = "", html: str = "",
                  attachments: Sequence[OutgoingFile] = ()) -> EmailMessage:
    """A plain-text message, or with ``html`` a multipart/alternative of the text and the HTML (clients show the
    best they can); with ``attachments`` a multipart/mixed of that and the files (base64, each with its file name,
    RFC 2231-encoded when it is not ASCII); with ``in_reply_to`` it threads as a reply (RFC 5322
    In-Reply-To/References)."""
    # No control characters in a header (CR/LF would inject headers; others break mail clients).
    subject = " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in subject).split())
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject[:MAX_SUBJECT * 2]
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id or new_message_id(sender)
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        chain = [r for r in references if r != in_reply_to] + [in_reply_to]
        message["References"] = " ".join(chain[-20:])  # the root and the nearest ancestors are what matter
    # An automatic answer: other auto-responders must not answer it back (RFC 3834).
    message["Auto-Submitted"] = "auto-replied" if in_reply_to else "auto-generated"
    # quoted-printable keeps the message 7-bit clean for relays without 8BITMIME.
    message.set_content(body, cte="quoted-printable")
    if html:
        message.add_alternative(html, subtype="html", cte="quoted-printable")
    for given in attachments:
        file = OutgoingFile.of(given.name, given.content_type, given.data)  # whoever built it: the name is a header
        maintype, subtype = file.content_type.split("/", 1)
        message.add_attachment(file.data, maintype=maintype, subtype=subtype, filename=file.name)
    return message


def build_reply(inbound: InboundEmail, body: str, *, sender: str, message_id: str = "",
                html: str = "") -> EmailMessage:
    """The reply to ``inbound``: same thread, ``Re:`` subject, to its From address (never to a Reply-To: see
    :attr:`InboundEmail.reply_to_header`)."""
    recipient = inbound.sender
    if inbound.sender_name:
        try:
            recipient = str(Address(inbound.sender_name, addr_spec=inbound.sender))
        except (ValueError, IndexError):  # an address the header registry cannot format: send to it bare
            recipient = inbound.sender
    return build_message(sender=sender, to=recipient, subject=reply_subject(inbound.subject), body=body,
                         in_reply_to=inbound.message_id,
                         references=inbound.references or ((inbound.in_reply_to,) if inbound.in_reply_to else ()),
                         message_id=message_id, html=html)
