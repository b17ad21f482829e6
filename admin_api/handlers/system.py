"""Liveness, dependency health with latencies, Prometheus metrics, the OpenAPI document and its docs page."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import aiohttp
from aiohttp import web
from sqlalchemy import func, text
from sqlmodel import Session, col, select

from admin_api.framework import ApiRouter, Ctx
from admin_api.schemas import HealthCheck, HealthOut, LivenessOut
from models import KnowledgeDocument
from voicebot import metrics
from voicebot.errors import EvaError

router = ApiRouter("system")

CHECK_TIMEOUT = 3.0
VERSION = "0.1.0"


@router.get("/health", role=None, absolute=True, summary="Liveness: the process answers")
async def liveness(ctx: Ctx) -> LivenessOut:
    return LivenessOut()


async def _timed(name: str, check: Callable[[], Awaitable[str]] | None) -> HealthCheck:
    if check is None:
        return HealthCheck(name=name, status="unconfigured", latency_ms=None)
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        return HealthCheck(
            name=name,
            status="error",
            latency_ms=round(CHECK_TIMEOUT * 1000, 1),
            detail=f"no answer within {CHECK_TIMEOUT:.0f}s",
        )
    except EvaError as exc:
        return HealthCheck(
            name=name, status="error", latency_ms=_ms(started), detail=f"[{exc.code}] {exc.message}"
        )
    except (OSError, aiohttp.ClientError) as exc:
        return HealthCheck(name=name, status="error", latency_ms=_ms(started), detail=type(exc).__name__)
    except Exception as exc:  # a health check reports every failure; it must never fail itself
        return HealthCheck(name=name, status="error", latency_ms=_ms(started), detail=type(exc).__name__)
    return HealthCheck(name=name, status="ok", latency_ms=_ms(started), detail=detail)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


@router.get(
    "/health", role=None, summary="Each dependency (database, ARI, AMI, LLM, Chroma) with its latency"
)
async def health(ctx: Ctx) -> HealthOut:
    services = ctx.services
    settings = services.settings

    async def database() -> str:
        def ping(session: Session) -> None:
            session.connection().execute(text("SELECT 1")).one()

        await services.db(ping)
        return services.engine.dialect.name

    async def ari() -> str:
        headers = {"Authorization": aiohttp.encode_basic_auth(settings.ari_user, settings.ari_password)}
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
        async with (
            aiohttp.ClientSession(headers=headers, timeout=timeout) as session,
            session.get(f"{settings.ari_url}/asterisk/ping") as response,
        ):
            if response.status != 200:
                raise EvaError(f"ARI answered {response.status}", code="ari_error")
            return "pong"

    async def ami() -> str:
        assert services.ami is not None
        await services.ami.ping()
        return "pong"

    async def llm() -> str:
        model = services.need_llm()
        models = await model.list_models()
        return f"{model.name}: {len(models)} model(s)"

    async def chroma() -> str:
        kb = services.need_kb()
        health_check = getattr(kb, "health", None)
        if callable(health_check):
            return str(await health_check())
        await asyncio.to_thread(lambda: kb.store.client().heartbeat())
        return "heartbeat"

    checks = await asyncio.gather(
        _timed("database", database),
        _timed("asterisk_ari", ari if settings.ari_password else None),
        _timed("asterisk_ami", ami if services.ami is not None else None),
        _timed("llm", llm if services.llm is not None else None),
        _timed("chroma", chroma if services.kb is not None else None),
    )
    status: Literal["ok", "degraded", "down"]
    if checks[0].status != "ok":
        status = "down"
    elif any(c.status == "error" for c in checks):
        status = "degraded"
    else:
        status = "ok"
    headers = ctx.request.headers
    if "Authorization" in headers or "X-API-Key" in headers:
        await services.auth.authenticate(ctx.request)  # signed in: the details (invalid credentials: 401)
        shown = list(checks)
    else:
        # Anonymous monitoring gets each dependency's status and latency, not what runs there or why it failed.
        shown = [c.model_copy(update={"detail": ""}) for c in checks]
    return HealthOut(
        status=status,
        version=VERSION,
        uptime_s=round(time.monotonic() - services.started, 1),
        checks=shown,
    )


@router.get(
    "/metrics",
    role=None,
    absolute=True,
    response_media={"text/plain": {"type": "string"}},
    summary="Prometheus metrics",
)
async def prometheus(ctx: Ctx) -> web.StreamResponse:
    def queued(session: Session) -> int:
        return int(
            session.exec(
                select(func.count())
                .select_from(KnowledgeDocument)
                .where(col(KnowledgeDocument.status).in_(("pending", "processing")))
            ).one()
        )

    try:
        metrics.INGESTION_QUEUE.set(await ctx.services.db(queued))
    except Exception:  # the scrape still reports everything else
        metrics.INGESTION_QUEUE.set(float("nan"))
    return web.Response(
        body=metrics.REGISTRY.render().encode("utf-8"), headers={"Content-Type": metrics.CONTENT_TYPE}
    )


@router.get(
    "/openapi.json",
    role=None,
    summary="This API as an OpenAPI 3.1 document",
    response_media={"application/json": {"type": "object"}},
)
async def openapi_document(ctx: Ctx) -> web.StreamResponse:
    from admin_api.app import openapi_spec

    return web.json_response(openapi_spec(ctx.request.app))


@router.get(
    "/docs",
    role=None,
    summary="Human-readable API reference (static HTML)",
    response_media={"text/html": {"type": "string"}},
)
async def docs(ctx: Ctx) -> web.StreamResponse:
    from admin_api.app import docs_page

    return web.Response(text=docs_page(ctx.request.app), content_type="text/html")
