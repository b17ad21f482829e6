"""A thin typed layer over aiohttp routes: one declaration per endpoint drives routing, authentication, role
checks, request validation, response serialisation and the OpenAPI document.

A handler declares what it takes in its signature::

    @router.get("/agents/{agent_id}", role="viewer", summary="Get an agent")
    async def get_agent(ctx: Ctx, agent_id: int) -> AgentOut: ...

    @router.post("/agents", role="designer", status=201)
    async def create_agent(ctx: Ctx, body: AgentCreate) -> AgentOut: ...

``ctx`` is the request context; a parameter named ``body`` is the JSON body and ``query`` the query string
(both pydantic models, unknown fields rejected); every other parameter is a path parameter (``int`` or
``str``).  The return annotation is the response model; a handler may also return an aiohttp
``StreamResponse`` (downloads).

Everything that goes wrong becomes ``{"error": {"code", "message", "field"}}`` with the matching status.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import re
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from voicebot import metrics
from voicebot.errors import BadRequest, EvaError, InvalidInput, NotFound, RateLimited, UnsupportedMediaType

if TYPE_CHECKING:
    from admin_api.auth import Principal
    from admin_api.services import Services

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
MAX_ID = 2**63 - 1
"""Largest row id a database can hold; a bigger path id cannot exist (404, not a database overflow)."""

_PARAM_RE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_STATUS_PHRASES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Not allowed for this role",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    502: "An upstream service (Asterisk, LLM) failed",
    503: "A needed service is not available",
}

SERVICES_KEY: web.AppKey[Services] = web.AppKey("eva_services")
CORS_HEADERS_KEY: web.RequestKey[dict[str, str]] = web.RequestKey("eva_cors_headers", dict[str, str])
"""Request key: the CORS headers this request's response gets.  A streamed response sends its headers before
the handler returns, so it must add these itself (``request.get(CORS_HEADERS_KEY)``)."""


@dataclass
class Ctx:
    """What a handler gets besides its parameters."""

    request: web.Request
    services: Services
    principal: Principal | None

    @property
    def user(self) -> Principal:
        """The authenticated caller (every non-public endpoint has one)."""
        if self.principal is None:
            raise RuntimeError("ctx.user on a public endpoint")
        return self.principal

    @property
    def client_ip(self) -> str:
        """The client's address (X-Forwarded-For is believed only from ``api_trusted_proxies``)."""
        return self.services.auth.client_ip(self.request)


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    """OpenAPI-style path below ``/api/v1`` (or absolute when ``absolute``), e.g. ``/agents/{agent_id}``."""
    handler: Handler
    role: str | None
    """Least role needed; None = public (no credentials)."""
    summary: str
    tag: str
    status: int
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    path_params: dict[str, type]
    path_patterns: dict[str, str]
    response: Any
    """The response type (a pydantic model, ``list[...]``) or None for no JSON body."""
    response_media: dict[str, dict[str, Any]] | None
    """Non-JSON success bodies, e.g. ``{"audio/wav": {"type": "string", "format": "binary"}}``."""
    request_media: dict[str, Any] | None
    """A non-JSON request body for the document, e.g. ``{"multipart/form-data": Model}``."""
    errors: tuple[int, ...]
    absolute: bool
    operation_id: str
    adapter: TypeAdapter[Any] | None = field(default=None, compare=False)

    @property
    def full_path(self) -> str:
        return self.path if self.absolute else API_PREFIX + self.path

    def aiohttp_path(self) -> str:
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if self.path_params.get(name) is int:
                return "{" + name + r":\d{1,30}}"
            pattern = self.path_patterns.get(name)
            return "{" + name + (":" + pattern if pattern else "") + "}"

        return _PARAM_RE.sub(sub, self.full_path)

    def documented_errors(self) -> list[int]:
        codes = set(self.errors)
        if self.role is not None:
            codes |= {401, 403}
        if self.path_params:
            codes.add(404)
        if self.body is not None or self.query is not None or self.path_params:
            codes.add(422)
        if self.body is not None:
            codes |= {400, 413, 415}
        return sorted(codes)


class ApiRouter:
    """Collects endpoints of one area (tag); ``create_app`` mounts them all."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        role: str | None,
        summary: str = "",
        status: int | None = None,
        errors: tuple[int, ...] = (),
        response_media: dict[str, dict[str, Any]] | None = None,
        request_media: dict[str, Any] | None = None,
        path_patterns: Mapping[str, str] | None = None,
        absolute: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            hints = typing.get_type_hints(handler)
            signature = inspect.signature(handler)
            body = query = None
            path_params: dict[str, type] = {}
            for name in signature.parameters:
                if name == "ctx":
                    continue
                hint = hints[name]
                if name == "body":
                    body = hint
                elif name == "query":
                    query = hint
                elif hint in (int, str):
                    path_params[name] = hint
                else:
                    raise TypeError(f"{handler.__qualname__}: unsupported parameter {name}: {hint}")
            if set(path_params) != set(_PARAM_RE.findall(path)):
                raise TypeError(
                    f"{handler.__qualname__}: path {path} and parameters {list(path_params)} differ"
                )
            returns = hints.get("return")
            json_response = returns not in (None, type(None)) and not (
                inspect.isclass(returns) and issubclass(returns, web.StreamResponse)
            )
            response = returns if json_response else None
            self.endpoints.append(
                Endpoint(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    role=role,
                    summary=summary or (inspect.getdoc(handler) or "").split("\n")[0],
                    tag=self.tag,
                    status=status or (200 if json_response or response_media else 204),
                    body=body,
                    query=query,
                    path_params=path_params,
                    path_patterns=dict(path_patterns or {}),
                    response=response,
                    response_media=response_media,
                    request_media=request_media,
                    errors=errors,
                    absolute=absolute,
                    operation_id=handler.__name__,
                    adapter=TypeAdapter(response) if response is not None else None,
                )
            )
            return handler

        return register

    def get(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kwargs)


# ------------------------------ request parsing ---------------------------------------------------
def validation_error(exc: ValidationError, *, where: str = "") -> EvaError:
    """The first pydantic error as our InvalidInput (422), or BadRequest (400) when the JSON is malformed."""
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return BadRequest("the request body is not valid JSON", code="malformed_json")
    loc = [str(part) for part in first.get("loc", ())]
    name = ".".join(loc) or None
    if first["type"] == "extra_forbidden":
        message = f"unknown field {name!r}"
    elif first["type"] == "model_type":
        message = f"the {where or 'value'} must be a JSON object"
    else:
        message = f"{name or where or 'value'}: {first['msg']}"
    return InvalidInput(message, field=name)


def _parse_path(endpoint: Endpoint, request: web.Request) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, kind in endpoint.path_params.items():
        raw = request.match_info[name]
        if kind is int:
            number = int(raw)
            if not 1 <= number <= MAX_ID:
                raise NotFound(f"{name} {raw} does not exist", field=name)
            values[name] = number
        else:
            values[name] = raw
    return values


def _parse_query(model: type[BaseModel], request: web.Request) -> BaseModel:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise InvalidInput(f"query parameter {key!r} given {len(values)} times", field=key)
        data[key] = values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, where="query") from exc


def body_optional(model: type[BaseModel]) -> bool:
    """A body whose fields all have defaults may be left out (``POST /auth/logout`` with no body)."""
    return not any(info.is_required() for info in model.model_fields.values())


INLINE_BODY_BYTES = 64 * 1024
"""JSON bodies up to this size are validated on the event loop (microseconds); bigger ones on a thread."""


async def _parse_body(model: type[BaseModel], request: web.Request) -> BaseModel:
    if not request.body_exists and body_optional(model):
        return model()
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json", field="Content-Type")
    raw = await request.read()
    if not raw.strip():
        if body_optional(model):
            return model()
        raise BadRequest("a JSON body is required", code="malformed_json")
    try:
        # strict: a JSON string is not silently an int, nor a number a string.  A big body (the limit is
        # 2 MB) is decoded on a thread: this loop also paces live calls' audio.
        if len(raw) > INLINE_BODY_BYTES:
            return await asyncio.to_thread(model.model_validate_json, raw, strict=True)
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise validation_error(exc, where="body") from exc


def make_handler(
    endpoint: Endpoint, services: Services
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    from admin_api.auth import require_role

    async def handle(request: web.Request) -> web.StreamResponse:
        principal = None
        if endpoint.role is not None:
            principal = await services.auth.authenticate(request)
            require_role(principal, endpoint.role)
        kwargs = _parse_path(endpoint, request)
        if endpoint.query is not None:
            kwargs["query"] = _parse_query(endpoint.query, request)
        if endpoint.body is not None:
            kwargs["body"] = await _parse_body(endpoint.body, request)
        result = await endpoint.handler(Ctx(request, services, principal), **kwargs)
        if isinstance(result, web.StreamResponse):
            return result
        if endpoint.adapter is None:
            return web.Response(status=endpoint.status)
        data = endpoint.adapter.dump_python(
            endpoint.adapter.validate_python(result, from_attributes=True), mode="json"
        )
        return web.json_response(data, status=endpoint.status)

    handle.__name__ = endpoint.operation_id
    return handle


# ------------------------------ middlewares -------------------------------------------------------
def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """``field`` is always present (null when the error is not about one input)."""
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(code, message, field), status=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure leaves as our JSON error body; unexpected ones are logged with their traceback."""
    try:
        return await handler(request)
    except EvaError as exc:
        status = exc.http_status
        headers: dict[str, str] = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="eva"'
        if status >= 500:
            log.warning("%s %s failed: [%s] %s", request.method, request.path, exc.code, exc.message)
        return error_response(status, exc.code, exc.message, exc.field, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "content-range")}
        if exc.status == 413:
            message = "the request body is too large"
        elif exc.status == 404:
            message = f"no such resource: {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed here"
        else:
            message = exc.reason
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message, headers=headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error")


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        # The route template, never the raw path: ids in paths would explode the label set.
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        metrics.HTTP_REQUESTS_TOTAL.inc(method=request.method, route=route, status=str(status))
        metrics.HTTP_REQUEST_SECONDS.observe(
            time.perf_counter() - started, method=request.method, route=route
        )


def cors_middleware(origins: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """CORS for the configured origins (comma-separated, or ``*``).  Preflights are answered here."""
    allowed = {o.strip().rstrip("/") for o in origins.split(",") if o.strip()}
    any_origin = "*" in allowed

    @web.middleware
    async def cors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        permitted = bool(origin) and (any_origin or origin in allowed)
        granted = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                   "Access-Control-Expose-Headers": "Content-Range, Retry-After"} if permitted else {}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not permitted:
                return error_response(403, "cors_forbidden", "this origin is not allowed")
            response: web.StreamResponse = web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type, X-API-Key, Range",
                    "Access-Control-Max-Age": "600",
                },
            )
        else:
            request[CORS_HEADERS_KEY] = granted
            response = await handler(request)
        if granted and not response.prepared:
            response.headers.update(granted)
        return response

    return cors


def status_phrase(status: int) -> str:
    return _STATUS_PHRASES.get(status, "Error")


def json_dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
