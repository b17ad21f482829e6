"""Blocking IMAP and SMTP sessions (stdlib ``imaplib`` / ``smtplib``) with timeouts and our error codes.

They block, so the e-mail service calls them through ``asyncio.to_thread``; one object is used by one thread at a
time.  Errors become :class:`~voicebot.errors.EmailError` with ``retryable`` telling the poller whether the
next poll may succeed (a server down) or a person has to act (a wrong password, a refused recipient).
"""

from __future__ import annotations

import imaplib
import logging
import re
import smtplib
import ssl
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from types import TracebackType
from typing import Any

from voicebot.config import Settings
from voicebot.errors import EmailError, EmailRecipientRefused, InvalidInput

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
_SIZE_RE = re.compile(rb"RFC822\.SIZE (\d{1,20})")


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """A verifying client context (certificate chain and host name); ``ca_file`` replaces the system's CAs."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise EmailError(f"cannot read the CA file {ca_file!r} (EVA_EMAIL_CA_FILE): {exc}", code="email_ca_file",
                         retryable=False) from exc


class ImapMailbox:
    """One IMAP session on one mailbox (``INBOX``), by UID.  Use as a context manager."""

    def __init__(self, host: str, port: int, user: str, password: str, *, use_ssl: bool = True,
                 mailbox: str = "INBOX", timeout: float = DEFAULT_TIMEOUT, ca_file: str = "") -> None:
        self.host, self.port, self.user, self._password = host, port, user, password
        self.use_ssl = use_ssl
        self.ca_file = ca_file
        self.mailbox = mailbox
        self.timeout = timeout
        self._imap: imaplib.IMAP4 | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ImapMailbox:
        return cls(settings.imap_host, settings.imap_port, settings.imap_user, settings.imap_password,
                   use_ssl=settings.imap_ssl, ca_file=settings.email_ca_file)

    def __enter__(self) -> ImapMailbox:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        context = tls_context(self.ca_file) if self.use_ssl else None
        try:
            if context is not None:
                imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(self.host, self.port, timeout=self.timeout,
                                                        ssl_context=context)
            else:
                imap = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise EmailError(f"cannot connect to the IMAP server {self.host}:{self.port}: {exc}",
                             code="imap_unavailable") from exc
        try:
            imap.login(self.user, self._password)
        except imaplib.IMAP4.error as exc:
            _logout(imap)
            raise EmailError(f"the IMAP server refused the login of {self.user!r}", code="imap_auth_failed",
                             retryable=False) from exc
        except OSError as exc:
            _logout(imap)
            raise EmailError(f"the IMAP connection failed during login: {exc}", code="imap_unavailable") from exc
        self._imap = imap
        self._command("select", lambda: imap.select(self.mailbox))

    def close(self) -> None:
        if self._imap is not None:
            _logout(self._imap)
            self._imap = None

    def _session(self) -> imaplib.IMAP4:
        if self._imap is None:
            raise EmailError("the IMAP session is not open", code="imap_unavailable")
        return self._imap

    def _command(self, what: str, call: Callable[[], tuple[str, Sequence[Any]]]) -> list[Any]:
        try:
            status, data = call()
        except (imaplib.IMAP4.abort, OSError) as exc:
            raise EmailError(f"the IMAP connection broke during {what}: {exc}", code="imap_unavailable") from exc
        except imaplib.IMAP4.error as exc:
            raise EmailError(f"the IMAP server refused {what}: {exc}", code="imap_error") from exc
        if status != "OK":
            raise EmailError(f"the IMAP server refused {what}: {data!r}", code="imap_error")
        return list(data)

    def unseen(self) -> list[int]:
        """UIDs of the unseen messages, oldest first."""
        imap = self._session()
        data = self._command("SEARCH UNSEEN", lambda: imap.uid("SEARCH", "UNSEEN"))
        raw = data[0] if data else b""
        return sorted(int(uid) for uid in (raw or b"").split()) if isinstance(raw, bytes) else []

    def size(self, uid: int) -> int | None:
        """The message's size in bytes as the server reports it (RFC822.SIZE); None when the UID is gone."""
        imap = self._session()
        data = self._command("FETCH RFC822.SIZE", lambda: imap.uid("FETCH", str(uid), "(RFC822.SIZE)"))
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if isinstance(line, bytes):
                found = _SIZE_RE.search(line)
                if found:
                    return int(found.group(1))
        return None

    def fetch(self, uid: int, max_bytes: int | None = None) -> bytes | None:
        """The whole message, without setting \\Seen (BODY.PEEK); None when the UID is gone.

        With ``max_bytes``, a message the server says is larger is not downloaded at all (InvalidInput
        ``email_too_large``), and no more than ``max_bytes + 1`` octets are read even if the size was wrong."""
        imap = self._session()
        section = "BODY.PEEK[]"
        if max_bytes is not None:
            size = self.size(uid)
            if size is None:
                return None
            if size > max_bytes:
                raise InvalidInput(f"the e-mail is {size} bytes, more than the {max_bytes} allowed "
                                   "(EVA_EMAIL_MAX_BYTES)", code="email_too_large")
            section = f"BODY.PEEK[]<0.{max_bytes + 1}>"  # a partial fetch: the server sends at most this
        data = self._command("FETCH", lambda: imap.uid("FETCH", str(uid), f"({section})"))
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                if max_bytes is not None and len(item[1]) > max_bytes:
                    raise InvalidInput(f"the e-mail is more than the {max_bytes} bytes allowed "
                                       "(EVA_EMAIL_MAX_BYTES)", code="email_too_large")
                return item[1]
        return None

    def mark_seen(self, uid: int) -> None:
        imap = self._session()
        self._command("STORE \\Seen", lambda: imap.uid("STORE", str(uid), "+FLAGS", "(\\Seen)"))


def _logout(imap: imaplib.IMAP4) -> None:
    try:
        imap.logout()
    except (imaplib.IMAP4.error, OSError) as exc:  # already broken: nothing left to close politely
        log.debug("IMAP logout failed: %s", exc)


class SmtpSender:
    """Sends messages through one SMTP server (a connection per message: replies are rare, servers drop idle
    connections).  With ``use_ssl`` (always on port 465) TLS starts with the connection; otherwise STARTTLS is
    required when ``starttls``: the password and the mail are never sent in clear then."""

    def __init__(self, host: str, port: int, user: str = "", password: str = "", *, starttls: bool = True,
                 timeout: float = DEFAULT_TIMEOUT, use_ssl: bool = False, ca_file: str = "") -> None:
        self.host, self.port, self.user, self._password = host, port, user, password
        self.starttls = starttls
        self.timeout = timeout
        self.use_ssl = use_ssl or port == 465
        self.ca_file = ca_file

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpSender:
        return cls(settings.smtp_host, settings.smtp_port, settings.smtp_user, settings.smtp_password,
                   starttls=settings.smtp_starttls, use_ssl=settings.smtp_ssl, ca_file=settings.email_ca_file)

    def send(self, message: EmailMessage) -> None:
        context = tls_context(self.ca_file) if self.use_ssl or self.starttls else None
        try:
            if self.use_ssl:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise EmailError(f"cannot connect to the SMTP server {self.host}:{self.port}: {exc}",
                             code="smtp_unavailable") from exc
        try:
            with smtp:
                smtp.ehlo()
                if self.starttls and not self.use_ssl:
                    if not smtp.has_extn("starttls"):
                        # Never send the password or the mail in clear when TLS was asked for.
                        raise EmailError(f"the SMTP server {self.host} does not offer STARTTLS (set "
                                         "EVA_SMTP_STARTTLS=false only for a trusted local relay)",
                                         code="smtp_tls_unavailable", retryable=False)
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if self.user:
                    smtp.login(self.user, self._password)
                smtp.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise EmailError(f"the SMTP server refused the login of {self.user!r}", code="smtp_auth_failed",
                             retryable=False) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            # The server's words usually repeat the address: caller data, so only at DEBUG.
            log.debug("SMTP refused recipients: %s", exc.recipients)
            codes = ", ".join(str(code) for code, _reply in exc.recipients.values())
            raise EmailRecipientRefused(f"the SMTP server refused the recipient (SMTP {codes})") from exc
        except smtplib.SMTPResponseException as exc:
            log.debug("SMTP error reply: %s %r", exc.smtp_code, exc.smtp_error)
            # 4xx: try again later; 5xx: this message will not be accepted as it is.
            raise EmailError(f"the SMTP server answered {exc.smtp_code}",
                             code="smtp_rejected" if exc.smtp_code >= 500 else "smtp_unavailable",
                             retryable=exc.smtp_code < 500) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise EmailError(f"sending through {self.host}:{self.port} failed: {exc}",
                             code="smtp_unavailable") from exc
