"""Eva's data: SQLModel tables (one module per area) and the database engine (``models.db``).

Importing this package registers every table on ``SQLModel.metadata``; Alembic migrations are generated from it.
Vectors are not here: they live in Chroma (see ``rag/``).
"""

from models.agents import Agent, Route
from models.analysis import Category
from models.audit import AuditEvent
from models.base import as_utc, utcnow
from models.calls import Call, CallTurn
from models.campaigns import Campaign, CampaignAttempt, CampaignEntry, DncEntry
from models.channels import InboundMessage
from models.contacts import Contact, Conversation, Message
from models.email import EmailReceipt, EmailTemplate
from models.flows import Flow, FlowRun
from models.knowledge import KnowledgeChunk, KnowledgeDocument
from models.trunks import SipTrunk, TrunkStateEvent
from models.users import ApiKey, KnownLoginAddress, RefreshToken, RevokedAccessToken, User
from models.workers import WorkerBeat

__all__ = [
    "Agent",
    "ApiKey",
    "AuditEvent",
    "Call",
    "CallTurn",
    "Campaign",
    "CampaignAttempt",
    "CampaignEntry",
    "Category",
    "Contact",
    "Conversation",
    "DncEntry",
    "EmailReceipt",
    "EmailTemplate",
    "Flow",
    "FlowRun",
    "InboundMessage",
    "KnowledgeChunk",
    "KnowledgeDocument",
    "KnownLoginAddress",
    "Message",
    "RefreshToken",
    "RevokedAccessToken",
    "Route",
    "SipTrunk",
    "TrunkStateEvent",
    "User",
    "WorkerBeat",
    "as_utc",
    "utcnow",
]
