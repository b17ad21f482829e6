"""E-mail channel: IMAP in, SMTP out, threaded replies from the agent core.

The names below are imported on first use, not with the package: the mail parser's child process
(:mod:`channels.email.parse_worker`) imports this package and must not pull in the database and the agent core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from channels.email.service import EmailChatResult, EmailSent, EmailService, PollResult
    from channels.email.transport import ImapMailbox, SmtpSender

__all__ = ["EmailChatResult", "EmailSent", "EmailService", "ImapMailbox", "PollResult", "SmtpSender"]

_HOMES = {"EmailChatResult": "service", "EmailSent": "service", "EmailService": "service", "PollResult": "service",
          "ImapMailbox": "transport", "SmtpSender": "transport"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"channels.email.{home}"), name)
