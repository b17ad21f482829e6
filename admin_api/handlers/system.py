"""Liveness, dependency health with latencies, Prometheus metrics, the OpenAPI document and its docs page.

``/api/v1/health`` is anonymous (monitoring), so it must cost the dependencies nothing per request: one round
of probes (database, ARI, AMI, LLM, Chroma) serves every request for ``health_cache_s`` seconds, and requests
that arrive while a round runs wait for that round (single flight).  ARI is probed through one kept HTTP
session (Asterisk's HTTP server has a small session limit, shared with call control); blocking probes run on a
small pool of their own, at most one job per probe, never on the default executor that call setup uses.

``/metrics`` needs ``EVA_METRICS_TOKEN`` as a bearer token; without one configured, only a scraper on this
host (a loopback peer, not relayed by a proxy) may read it.  Its one database count is cached too.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp
from aiohttp import web
from sqlalchemy import func, text
from sqlmodel import col, select

from admin_api.framework import ApiRouter, Ctx
from admin_api.schemas import CallLoad, HealthCheck, HealthOut, LivenessOut
from models import KnowledgeDocument
from models.db import session_scope
from voicebot import metrics
from voicebot.errors import AuthError, EvaError, Forbidden

if TYPE_CHECKING:
    from admin_api.services import Services

router = ApiRouter("system")

CHECK_TIMEOUT = 3.0
VERSION = "0.1.0"
METRICS_CACHE_S = 10.0
"""Seconds one count of queued knowledge documents serves /metrics scrapes."""
T = TypeVar("T")


@router.get("/health", role=None, absolute=True, summary="Liveness: the process answers")
async def liveness(ctx: Ctx) -> LivenessOut:
    watch = ctx.services.asterisk_process
    return LivenessOut(asterisk=watch.snapshot()["state"] if watch is not None else None)


def _asterisk_process_check(watch: Any) -> HealthCheck:
    """The supervisor's view of the local Asterisk process (no I/O: its state is kept current every few seconds)."""
    snap = watch.snapshot()
    state = snap["state"]
    return HealthCheck(name="asterisk_process", status="ok" if state == "running" else "error", latency_ms=None,
                       detail=f"{state}; {snap['restarts']} restart(s); down for {snap['down_for_s']}s")


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


class HealthMonitor:
    """Cached, single-flight dependency probes of one application (see the module docstring)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.ttl = max(0.0, services.settings.health_cache_s)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="eva-health")
        self._blocking: dict[str, Future[object]] = {}
        self._ari: aiohttp.ClientSession | None = None
        self._checks: tuple[float, list[HealthCheck]] | None = None
        self._round: asyncio.Task[list[HealthCheck]] | None = None
        self._queued: tuple[float, float] | None = None
        self._queue_round: asyncio.Task[float] | None = None
        self.rounds = 0
        """Probe rounds run (what a flood of requests actually cost the dependencies)."""

    async def checks(self) -> list[HealthCheck]:
        cached = self._checks
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        if self._round is None:
            self._round = asyncio.ensure_future(self._probe())
            self._round.add_done_callback(self._round_done)
        # Shielded: one impatient client going away must not cancel the round the others wait for.
        return await asyncio.shield(self._round)

    def _round_done(self, task: asyncio.Task[list[HealthCheck]]) -> None:
        self._round = None
        if not task.cancelled() and task.exception() is None:
            self._checks = (time.monotonic(), task.result())

    async def _in_pool(self, name: str, fn: Callable[[], T]) -> T:
        """Run a blocking probe on the health pool; a probe whose last job never returned is not queued again
        (a hung Chroma must not pile up a job per round)."""
        running = self._blocking.get(name)
        if running is not None and not running.done():
            raise EvaError("the previous probe has not returned yet", code="probe_stuck")
        future = self._pool.submit(fn)
        self._blocking[name] = future  # type: ignore[assignment]
        return await asyncio.wrap_future(future)

    def _ari_session(self) -> aiohttp.ClientSession:
        if self._ari is None or self._ari.closed:
            settings = self.services.settings
            self._ari = aiohttp.ClientSession(
                headers={"Authorization": aiohttp.encode_basic_auth(settings.ari_user, settings.ari_password)},
                timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT),
                connector=aiohttp.TCPConnector(limit=1),
            )
        return self._ari

    async def _probe(self) -> list[HealthCheck]:
        self.rounds += 1
        services = self.services
        settings = services.settings

        async def database() -> str:
            def ping() -> None:
                with session_scope(services.engine) as session:
                    session.connection().execute(text("SELECT 1")).one()

            await self._in_pool("database", ping)
            return services.engine.dialect.name

        async def ari() -> str:
            async with self._ari_session().get(f"{settings.ari_url}/asterisk/ping") as response:
                if response.status != 200:
                    raise EvaError(f"ARI answered {response.status}", code="ari_error")
                await response.read()
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
            await self._in_pool("chroma", lambda: kb.store.client().heartbeat())
            return "heartbeat"

        return list(
            await asyncio.gather(
                _timed("database", database),
                _timed("asterisk_ari", ari if settings.ari_password else None),
                _timed("asterisk_ami", ami if services.ami is not None else None),
                _timed("llm", llm if services.llm is not None else None),
                _timed("chroma", chroma if services.kb is not None else None),
            )
        )

    async def ingestion_queue(self) -> float:
        """Knowledge documents waiting or being processed (cached ``METRICS_CACHE_S``; NaN when unknown)."""
        cached = self._queued
        if cached is not None and time.monotonic() - cached[0] < METRICS_CACHE_S:
            return cached[1]
        if self._queue_round is None:
            self._queue_round = asyncio.ensure_future(self._count_queue())
            self._queue_round.add_done_callback(self._queue_done)
        return await asyncio.shield(self._queue_round)

    def _queue_done(self, task: asyncio.Task[float]) -> None:
        self._queue_round = None
        if not task.cancelled() and task.exception() is None:
            self._queued = (time.monotonic(), task.result())

    async def _count_queue(self) -> float:
        def count() -> int:
            with session_scope(self.services.engine) as session:
                return int(
                    session.exec(
                        select(func.count())
                        .select_from(KnowledgeDocument)
                        .where(col(KnowledgeDocument.status).in_(("pending", "processing")))
                    ).one()
                )

        try:
            return float(await asyncio.wait_for(self._in_pool("ingestion_queue", count), CHECK_TIMEOUT))
        except Exception:  # any database trouble: the gauge says "unknown" and the scrape reports the rest
            return float("nan")

    async def close(self) -> None:
        if self._round is not None:
            self._round.cancel()
        if self._ari is not None:
            await self._ari.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def monitor(services: Services) -> HealthMonitor:
    """This application's monitor, made on first use and closed with the application (``Services.owned``)."""
    for owned in services.owned:
        if isinstance(owned, HealthMonitor):
            return owned
    made = HealthMonitor(services)
    services.owned.append(made)
    return made


@router.get(
    "/health", role=None, summary="Each dependency (database, ARI, AMI, LLM, Chroma) with its latency"
)
async def health(ctx: Ctx) -> HealthOut:
    services = ctx.services
    headers = ctx.request.headers
    signed_in = "Authorization" in headers or "X-API-Key" in headers
    if signed_in:
        # The details need valid credentials (else 401) of someone who may read (a scoped chat key may not).
        signed_in = (await services.auth.authenticate(ctx.request)).has_role("viewer")
    checks = await monitor(services).checks()
    if services.asterisk_process is not None:
        checks = [*checks, _asterisk_process_check(services.asterisk_process)]
    status: Literal["ok", "degraded", "down"]
    if checks[0].status != "ok":
        status = "down"
    elif any(c.status == "error" for c in checks):
        status = "degraded"
    else:
        status = "ok"
    # Anonymous monitoring gets each dependency's status and latency, not what runs there or why it failed.
    shown = list(checks) if signed_in else [c.model_copy(update={"detail": ""}) for c in checks]
    admission = services.admission
    return HealthOut(
        status=status,
        version=VERSION,
        uptime_s=round(time.monotonic() - services.started, 1),
        checks=shown,
        # A load balancer or the dialplan may steer calls by it, so it is shown to anonymous monitoring too.
        calls=CallLoad(active=admission.active, capacity=admission.capacity, refused=admission.refused)
        if admission is not None else None,
    )


def _authorize_scrape(ctx: Ctx) -> None:
    token = ctx.services.settings.metrics_token
    if token:
        scheme, _, value = ctx.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise AuthError("send the metrics token as 'Authorization: Bearer <EVA_METRICS_TOKEN>'")
        return
    # No token configured: a scraper on this host only.  A loopback peer that carries a forwarding header
    # is a local reverse proxy relaying someone else, so it is refused too.
    headers = ctx.request.headers
    relayed = "X-Forwarded-For" in headers or "Forwarded" in headers
    try:
        local = ip_address(ctx.client_ip).is_loopback
    except ValueError:
        local = False
    if relayed or not local:
        raise Forbidden(
            "metrics are served to local scrapers only; set EVA_METRICS_TOKEN to scrape from elsewhere",
            code="metrics_forbidden",
        )


@router.get(
    "/metrics",
    role=None,
    absolute=True,
    errors=(401, 403),
    response_media={"text/plain": {"type": "string"}},
    summary="Prometheus metrics (bearer EVA_METRICS_TOKEN; without one, local scrapers only)",
)
async def prometheus(ctx: Ctx) -> web.StreamResponse:
    _authorize_scrape(ctx)
    metrics.INGESTION_QUEUE.set(await monitor(ctx.services).ingestion_queue())
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
