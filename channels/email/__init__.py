"""E-mail channel: IMAP in, SMTP out, threaded replies from the agent core."""

from channels.email.service import EmailChatResult, EmailSent, EmailService, PollResult
from channels.email.transport import ImapMailbox, SmtpSender

__all__ = ["EmailChatResult", "EmailSent", "EmailService", "ImapMailbox", "PollResult", "SmtpSender"]
