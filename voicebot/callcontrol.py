"""The admin API's view of live calls, implemented over ARI (see ``admin_api.control.CallControl``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from admin_api.control import LiveCall, OriginateRequest
from voicebot.ari import AriClient
from voicebot.ari.events import ChannelInfo
from voicebot.errors import AriError, NotFound


class AriCallControl:
    def __init__(self, ari: AriClient) -> None:
        self.ari = ari

    async def live_calls(self) -> list[LiveCall]:
        calls: list[LiveCall] = []
        now = datetime.now(UTC)
        for raw in await self.ari.channels():
            info = ChannelInfo.parse(raw)
            if info.is_media_channel:
                continue
            try:
                created = datetime.fromisoformat(str(raw.get("creationtime", "")).replace("+0000", "+00:00"))
                duration = max(0.0, (now - created).total_seconds())
            except ValueError:
                duration = 0.0
            calls.append(LiveCall(channel_id=info.id, channel=info.name, state=info.state,
                                  caller=info.caller_number, did=info.exten, duration_s=round(duration, 1)))
        return calls

    async def hangup(self, channel_id: str) -> None:
        try:
            await self.ari.request("DELETE", f"channels/{channel_id}", params={"reason": "normal"})
        except AriError as exc:
            if exc.code == "ari_not_found":
                raise NotFound(f"no live call on channel {channel_id}", field="channel_id") from exc
            raise

    async def originate(self, request: OriginateRequest) -> str:
        """The callee's channel enters Stasis when answered and is handled like an inbound call, with
        ``direction=outbound`` and the requested agent."""
        # The channel id is chosen here so the EVA_ORIGIN proof (bound to it) can be set at creation: without
        # it the voice app treats direction/agent in the arguments as a caller's forgery.
        channel_id = f"eva-out-{uuid.uuid4().hex[:16]}"
        reply = await self.ari.originate(
            request.dial_string, app_args=f"agent={request.agent_name},did={request.number},direction=outbound",
            caller_id=request.caller_id, timeout=int(request.timeout_s), channel_id=channel_id,
            variables=self.ari.origin_variables(channel_id))
        return str(reply.get("id", channel_id))
