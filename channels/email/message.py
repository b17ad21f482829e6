"""Pure e-mail codecs (stdlib ``email`` package): an inbound message reduced to what the agent should read, and
the reply that threads under it.  No I/O here.

What the agent reads: the ``text/plain`` body when there is one, else the ``text/html`` body as text; attachments
are never read.  The quoted history a mail client appends ("On Mon, … wrote:" and ``>`` lines, Outlook's
"-----Original Message-----" block, Gmail's ``gmail_quote``/``<blockquote>``) and the signature after ``-- ``
are removed, because the conversation memory already holds the earlier turns.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import html
import re
import unicodedata
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from html.parser import HTMLParser

from voicebot.errors import InvalidInput

MAX_SUBJECT = 200
"""Characters of a subject kept (a longer one is cut; headers fold anyway)."""

_MSGID_RE = re.compile(r"<[^<>\s]+>")
_REPLY_PREFIX_RE = re.compile(r"^\s*((re|aw|sv|antw|fwd?|wg)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
# "On <date>, <name> wrote:" and its translations (the verb may come before the name: "Am …, schrieb X:").
_VERBS = r"(wrote|schrieb|a écrit|escribió|ha scritto|schreef)"
_ATTRIBUTION_RE = re.compile(rf"^\s*(On|Am|Le|El|Il|Op)\b.*\b{_VERBS}\b.*:\s*$", re.IGNORECASE)
_ATTRIBUTION_START_RE = re.compile(r"^\s*(On|Am|Le|El|Il|Op)\s", re.IGNORECASE)
_ATTRIBUTION_END_RE = re.compile(rf"\b{_VERBS}\b.*:\s*$", re.IGNORECASE)
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
class InboundEmail:
    """An e-mail as the channel needs it."""

    message_id: str
    """``<...>``; synthesised from a hash of the message when the header is missing."""
    in_reply_to: str
    references: tuple[str, ...]
    sender: str
    """The From address, lower-cased."""
    sender_name: str
    reply_to: str
    """Where the answer goes (Reply-To, else From)."""
    to: tuple[str, ...]
    subject: str
    text: str
    """The new text of the message (quotes, signature and attachments removed)."""
    auto_generated: bool
    """An auto-reply, a bounce or list mail: never answered (mail loops)."""

    @property
    def thread_ids(self) -> list[str]:
        """Message-IDs this message answers, nearest first."""
        ids = [self.in_reply_to] if self.in_reply_to else []
        ids += [r for r in reversed(self.references) if r not in ids]
        return ids

    @property
    def thread_root(self) -> str:
        return self.references[0] if self.references else (self.in_reply_to or self.message_id)


def parse_email(raw: bytes) -> InboundEmail:
    """Parse a whole RFC 5322 message.  InvalidInput when it has no usable From address."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    name, sender = parseaddr(str(message.get("From", "")))
    if "@" not in sender:
        raise InvalidInput("the e-mail has no sender address", field="From")
    _reply_name, reply_to = parseaddr(str(message.get("Reply-To", "")))
    message_ids = _MSGID_RE.findall(str(message.get("Message-ID", "")))
    message_id = message_ids[0] if message_ids else f"<{hashlib.sha256(raw).hexdigest()[:40]}@eva.invalid>"
    in_reply_to = _MSGID_RE.findall(str(message.get("In-Reply-To", "")))
    references = tuple(_MSGID_RE.findall(str(message.get("References", ""))))
    recipients = tuple(addr.lower() for _n, addr in getaddresses([str(v) for v in message.get_all("To", [])])
                       if addr)
    return InboundEmail(
        message_id=message_id[:255],
        in_reply_to=in_reply_to[0][:255] if in_reply_to else "",
        references=tuple(r[:255] for r in references),
        sender=sender.strip().lower(),
        sender_name=name.strip()[:200],
        reply_to=(reply_to if "@" in reply_to else sender).strip(),
        to=recipients,
        subject=" ".join(str(message.get("Subject", "")).split())[:MAX_SUBJECT],
        text=extract_text(message),
        auto_generated=_auto_generated(message, sender),
    )


def _auto_generated(message: EmailMessage, sender: str) -> bool:
    auto = str(message.get("Auto-Submitted", "no")).strip().lower()
    precedence = str(message.get("Precedence", "")).strip().lower()
    local = sender.split("@", 1)[0].lower()
    return (auto not in ("", "no") or precedence in ("bulk", "junk", "list", "auto_reply")
            or "List-Id" in message or "X-Autoreply" in message or "X-Autorespond" in message
            or local in ("mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply"))


def extract_text(message: EmailMessage) -> str:
    """The readable new text of ``message``: plain text preferred, HTML converted, quotes removed."""
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    content = _decoded(body)
    if body.get_content_subtype() == "html":
        content = html_to_text(content)
    return strip_courtesies(strip_quoted(content))


def _decoded(part: MIMEPart) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeDecodeError):
        # An unknown or wrong charset: the bytes as well as they decode.
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


class _TextExtractor(HTMLParser):
    """HTML to plain text: block elements become line breaks; scripts, styles and quoted history are dropped."""

    _SKIP = frozenset({"script", "style", "head", "title", "blockquote"})
    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
                        "hr", "pre", "section", "article"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self._stack: list[str] = []

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
            self._stack.append(tag)
            return
        self._stack.append(tag)
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag not in self._stack:
            return
        while self._stack:  # close everything left open inside (sloppy HTML)
            open_tag = self._stack.pop()
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
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = html.unescape("".join(parser.parts)).replace("\xa0", " ")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def strip_quoted(text: str) -> str:
    """Remove the quoted history and the signature a reply carries below (or around) the new text."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        if line.rstrip() == "--" and line.startswith("--"):  # "-- " signature separator (RFC 3676)
            break
        if _ATTRIBUTION_RE.match(line) or _SEPARATOR_RE.match(line):
            break
        if _ATTRIBUTION_START_RE.match(line) and index + 1 < len(lines) and \
                _ATTRIBUTION_END_RE.search(lines[index + 1]) and not lines[index + 1].lstrip().startswith(">"):
            break  # an attribution line wrapped in two
        if _HEADER_BLOCK_RE.match(line) and kept and not kept[-1].strip() and _looks_like_header_block(lines, index):
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
    if _GREETING_RE.match(lines[content[0]]):
        lines[content[0]] = ""
        content = content[1:]
    # A sign-off is one of the last lines, followed only by a short name (no sentence after it).
    for position in range(max(1, len(content) - 3), len(content)):
        index = content[position]
        after = [lines[i].strip() for i in content[position + 1:]]
        if _SIGNOFF_RE.match(lines[index]) and all(len(a) <= 40 and len(a.split()) <= 4 for a in after):
            lines = lines[:index]
            break
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _looks_like_header_block(lines: list[str], index: int) -> bool:
    following = " ".join(lines[index:index + 5]).lower()
    return ("sent:" in following or "gesendet:" in following or "date:" in following) and (
        "subject:" in following or "betreff:" in following)


def reply_subject(subject: str) -> str:
    """``Re: <subject>`` without piling up prefixes (``Re: Re: AW:``)."""
    base = _REPLY_PREFIX_RE.sub("", subject).strip()
    return f"Re: {base}" if base else "Re: your message"


def new_message_id(sender: str) -> str:
    """A fresh Message-ID in the sender's domain."""
    domain = sender.rsplit("@", 1)[-1] if "@" in sender else "eva.invalid"
    return make_msgid(domain=domain)


def build_message(*, sender: str, to: str, subject: str, body: str, in_reply_to: str = "",
                  references: tuple[str, ...] = (), message_id: str = "") -> EmailMessage:
    """A plain-text message; with ``in_reply_to`` it threads as a reply (RFC 5322 In-Reply-To/References)."""
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
    return message


def build_reply(inbound: InboundEmail, body: str, *, sender: str, message_id: str = "") -> EmailMessage:
    """The reply to ``inbound``: same thread, ``Re:`` subject, to its Reply-To (else From)."""
    recipient = inbound.reply_to
    if inbound.sender_name:
        try:
            recipient = str(Address(inbound.sender_name, addr_spec=inbound.reply_to))
        except (ValueError, IndexError):  # an address the header registry cannot format: send to it bare
            recipient = inbound.reply_to
    return build_message(sender=sender, to=recipient, subject=reply_subject(inbound.subject), body=body,
                         in_reply_to=inbound.message_id,
                         references=inbound.references or ((inbound.in_reply_to,) if inbound.in_reply_to else ()),
                         message_id=message_id)
