"""WhatsApp Cloud API channel: webhook payload codecs, the Graph API client and the answering service."""

from channels.whatsapp.client import WhatsAppClient
from channels.whatsapp.service import Accepted, AdminSent, WhatsAppService

__all__ = ["Accepted", "AdminSent", "WhatsAppClient", "WhatsAppService"]
