"""The OpenAPI 3.1 document, generated from the endpoint declarations and their pydantic models, and a plain
HTML page that lists it (no JavaScript, no CDN: the admin API may run on a host without internet access)."""

from __future__ import annotations

import html
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from admin_api.framework import MAX_ID, Endpoint, body_optional, status_phrase
from admin_api.schemas import ErrorBody

REF = "#/components/schemas/{model}"
SUCCESS_PHRASES = {
    200: "OK",
    201: "Created",
    202: "Accepted (work continues in the background)",
    204: "Done, no content",
    206: "Partial content (Range)",
}


def _model_of(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _response_models(tp: Any) -> list[type[BaseModel]]:
    if _model_of(tp):
        return [tp]
    return [m for arg in typing.get_args(tp) if (m := _model_of(arg))]


def _ref(model: type[BaseModel], names: dict[Any, Any], mode: str) -> dict[str, Any]:
    return dict(names[(model, mode)])


def _response_schema(tp: Any, names: dict[Any, Any]) -> dict[str, Any]:
    model = _model_of(tp)
    if model is not None:
        return _ref(model, names, "serialization")
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        item_model = _model_of(item)
        if item_model is None:
            raise TypeError(f"unsupported response type {tp}")
        return {"type": "array", "items": _ref(item_model, names, "serialization")}
    raise TypeError(f"unsupported response type {tp}")


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    parameters = []
    for name, original in schema.get("properties", {}).items():
        prop = dict(original)
        # A query string has no null: "X | None = None" is simply an optional parameter.
        if "anyOf" in prop:
            options = [o for o in prop.pop("anyOf") if o.get("type") != "null"]
            if len(options) == 1:
                prop.update(options[0])
            else:
                prop["anyOf"] = options
        if prop.get("default", ...) is None:
            prop.pop("default")
        description = prop.pop("description", "")
        prop.pop("title", None)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def build_openapi(
    endpoints: list[Endpoint], *, title: str = "Eva admin API", version: str = "1"
) -> dict[str, Any]:
    wanted: set[tuple[type[BaseModel], str]] = {(ErrorBody, "serialization")}
    for endpoint in endpoints:
        if endpoint.body is not None:
            wanted.add((endpoint.body, "validation"))
        for model in _response_models(endpoint.response):
            wanted.add((model, "serialization"))
        for media_model in (endpoint.request_media or {}).values():
            wanted.add((media_model, "validation"))
    ordered = sorted(wanted, key=lambda item: (item[0].__name__, item[1]))
    names, definitions = models_json_schema(ordered, ref_template=REF)  # type: ignore[arg-type]

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in sorted(endpoints, key=lambda e: (e.full_path, e.method)):
        operation: dict[str, Any] = {
            "operationId": endpoint.operation_id,
            "summary": endpoint.summary,
            "tags": [endpoint.tag],
            "x-eva-role": endpoint.role or "public",
        }
        parameters: list[dict[str, Any]] = []
        for name, kind in endpoint.path_params.items():
            if kind is int:
                schema: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
            else:
                schema = {"type": "string"}
                if name in endpoint.path_patterns:
                    schema["pattern"] = f"^{endpoint.path_patterns[name]}$"
            parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
        if endpoint.query is not None:
            parameters += _query_parameters(endpoint.query)
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": not body_optional(endpoint.body),
                "content": {"application/json": {"schema": _ref(endpoint.body, names, "validation")}},
            }
        elif endpoint.request_media:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    media: {"schema": _ref(model, names, "validation")}
                    for media, model in endpoint.request_media.items()
                },
            }
        responses: dict[str, Any] = {}
        success: dict[str, Any] = {"description": SUCCESS_PHRASES.get(endpoint.status, "OK")}
        if endpoint.response is not None:
            success["content"] = {"application/json": {"schema": _response_schema(endpoint.response, names)}}
        elif endpoint.response_media:
            success["content"] = {
                media: {"schema": schema} for media, schema in endpoint.response_media.items()
            }
            responses["206"] = {"description": SUCCESS_PHRASES[206], "content": success["content"]}
        responses[str(endpoint.status)] = success
        for status in endpoint.documented_errors():
            responses[str(status)] = {
                "description": status_phrase(status),
                "content": {"application/json": {"schema": _ref(ErrorBody, names, "serialization")}},
            }
        operation["responses"] = dict(sorted(responses.items()))
        operation["security"] = [] if endpoint.role is None else [{"bearerAuth": []}, {"apiKey": []}]
        paths.setdefault(endpoint.full_path, {})[endpoint.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": 'Eva\'s admin API. Errors are always {"error": {"code", "message", '
            '"field"}}. Roles: pending < viewer < designer < admin (x-eva-role names the least '
            "role an operation needs; pending is an account an admin has not given a role yet, which reaches only "
            "who-am-I, its password and sign-out); chat is an API-key role that reaches only the operations marked "
            "chat (designers and admins reach them too).",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def render_docs(spec: dict[str, Any]) -> str:
    """A readable, self-contained HTML listing of the document."""
    esc = html.escape
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            by_tag.setdefault(operation["tags"][0], []).append((method.upper(), path, operation))
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(spec['info']['title'])}</title>",
        "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:70em;margin:2em auto;"
        "padding:0 1em;color:#222}"
        "code{background:#f3f3f3;padding:0 .25em}.op{border-left:4px solid #888;margin:.6em 0;"
        "padding:.2em .8em}"
        ".GET{border-color:#2a7}.POST{border-color:#27c}.PUT,.PATCH{border-color:#c80}.DELETE{border-color:#c33}"
        ".m{font-weight:bold;display:inline-block;width:5em}.r{color:#666;font-size:90%}</style></head><body>",
        f"<h1>{esc(spec['info']['title'])}</h1><p>{esc(spec['info']['description'])}</p>",
        '<p>Machine-readable: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>. Authenticate with '
        "<code>Authorization: Bearer &lt;access token&gt;</code> (from <code>POST /api/v1/auth/login</code>) "
        "or <code>X-API-Key: eva_...</code>.</p>",
    ]
    for tag in sorted(by_tag):
        parts.append(f"<h2 id='{esc(tag)}'>{esc(tag)}</h2>")
        for method, path, operation in sorted(by_tag[tag], key=lambda item: (item[1], item[0])):
            body = operation.get("requestBody", {}).get("content", {})
            body_text = ", ".join(
                f"{esc(media)} {esc(str(item['schema'].get('$ref', '')).rsplit('/', 1)[-1])}"
                for media, item in body.items()
            )
            statuses = ", ".join(esc(code) for code in operation["responses"])
            parts.append(
                f"<div class='op {method}'><span class=m>{method}</span><code>{esc(path)}</code> — "
                f"{esc(operation.get('summary', ''))}<div class=r>role: {esc(operation['x-eva-role'])}"
                f"{'; body: ' + body_text if body_text else ''}; responses: {statuses}</div></div>"
            )
    parts.append("<h2>Schemas</h2>")
    for name, schema in sorted(spec["components"]["schemas"].items()):
        fields = ", ".join(f"<code>{esc(field)}</code>" for field in schema.get("properties", {}))
        parts.append(f"<p id='{esc(name)}'><b>{esc(name)}</b>: {fields}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
