"""Text channels (WhatsApp Cloud API, e-mail over IMAP/SMTP) that answer contacts with the same agent core as
calls (``voicebot.agent.core.AgentCore.respond``).  Each channel lives in its own module here."""
