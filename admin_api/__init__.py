"""Eva's admin HTTP API (aiohttp) under ``/api/v1``: agents, knowledge, calls, routes, SIP trunks, dialplans,
flows, conversations, users and API keys; JWT + API-key auth with roles; OpenAPI, health and metrics.

Entry point: :func:`admin_api.app.create_app`.  The voice loop plugs live-call control in through the
:class:`admin_api.control.CallControl` protocol.
"""

from admin_api.app import create_app
from admin_api.control import CallControl, LiveCall, OriginateRequest

__all__ = ["CallControl", "LiveCall", "OriginateRequest", "create_app"]
