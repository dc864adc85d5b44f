"""The OpenAPI 3.1 description of the API, built from the handlers' own models.

Each handler declares what it takes and gives with `@endpoint(...)`: the pydantic models that
validate its body and query (the same ones the handler parses with), and the model of the
`data` of its success envelope. `spec(app)` walks the application's routes and turns those
declarations into the document served at `GET /openapi.json`, so the description cannot drift
from the code that validates requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from gateway import API_BASE, __version__

REF = "#/components/schemas/{model}"

ERROR_TEXT = {400: "the request is invalid; `msg` names the field", 401: "missing or invalid API key",
              408: "the request body did not arrive within server.body_timeout_s",
              404: "not found", 405: "method not allowed", 409: "conflict", 413: "body too large",
              500: "internal error", 503: "unavailable", 504: "still running after the wait"}


class ErrorEnvelope(BaseModel):
    """Every error: HTTP status as `code`, the reason in `msg`."""

    model_config = ConfigDict(title="ErrorEnvelope")

    code: str = Field(pattern=r"^[45]\d\d$")
    msg: str
    data: None
    success: bool = Field(json_schema_extra={"const": False})
    failed: bool = Field(json_schema_extra={"const": True})


@dataclass(frozen=True)
class Endpoint:
    summary: str
    data: Optional[type[BaseModel]] = None  # model of the success envelope's `data`
    body: Optional[type[BaseModel]] = None  # JSON body model
    query: Optional[type[BaseModel]] = None  # query-string model
    errors: tuple[int, ...] = ()
    content: Optional[dict[str, Any]] = None  # a non-JSON success answer: {media type: schema}
    request_content: Optional[dict[str, Any]] = None  # a non-JSON body (or one beside `body`): {media type: schema}
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra schema for a path parameter
    auth: bool = True  # under server.api_keys
    undeclared: bool = False  # a plugin route without @endpoint
    answers: tuple[type[BaseModel], ...] = ()  # models of a JSON answer without the envelope (one of them)
    error_model: Optional[type[BaseModel]] = None  # the errors' body, when not the envelope (/v1)


def endpoint(summary: str, **kw) -> Callable:
    """Declare a handler's models for the OpenAPI document."""
    def mark(handler):
        handler.__endpoint__ = Endpoint(summary, **kw)
        return handler
    return mark


def _undeclared(handler) -> Endpoint:
    """A route a plugin added without @endpoint: listed, its answers left open."""
    doc = (handler.__doc__ or "").strip().splitlines()
    return Endpoint(doc[0] if doc else f"{handler.__name__} (not described by its plugin)", undeclared=True)


def _envelope(data_ref: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "object", "required": ["code", "msg", "data", "success", "failed"],
            "properties": {"code": {"const": "0000"}, "msg": {"const": "success"},
                           "data": data_ref or {"type": "null"},
                           "success": {"const": True}, "failed": {"const": False}}}


def _params(model: type[BaseModel]) -> list[dict[str, Any]]:
    out = []
    props = model.model_json_schema(ref_template=REF)["properties"]
    for name, f in model.model_fields.items():
        prop = props[name]
        out.append({"name": f.alias or name, "in": "query", "required": f.is_required(),
                    "description": f.description or "", "schema": prop})
    return out


def _operation(method: str, path: str, ep: Endpoint, refs: dict[type, dict]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": ep.summary, "operationId": f"{method}_{path}".replace("/", "_")
                          .replace("{", "").replace("}", "").replace(".", "_").replace("-", "_")}
    params = [{"name": n, "in": "path", "required": True, "schema": ep.path_params.get(n, {"type": "string"})}
              for n in _path_names(path)]
    if ep.query:
        params += _params(ep.query)
    if params:
        op["parameters"] = params
    if ep.body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[ep.body]},
                                                           **(ep.request_content or {})}}
    elif ep.request_content:
        op["requestBody"] = {"required": True, "content": ep.request_content}
    if ep.undeclared:
        op["responses"] = {"default": {"description": "not described by the plugin that added this route"}}
        return op
    if ep.answers:
        one = [refs[m] for m in ep.answers]
        ok_content = {"application/json": {"schema": one[0] if len(one) == 1 else {"oneOf": one}}, **(ep.content or {})}
    else:
        ok_content = ep.content or {"application/json": {"schema": _envelope(refs.get(ep.data))}}
    responses: dict[str, Any] = {"200": {"description": "success", "content": ok_content}}
    codes = set(ep.errors) | {500}
    if ep.auth:
        codes.add(401)
    if ep.body:
        codes |= {400, 408, 413}
    if ep.query:
        codes.add(400)
    for code in sorted(codes):
        responses[str(code)] = {"description": ERROR_TEXT.get(code, "error"),
                                "content": {"application/json": {"schema": refs[ep.error_model or ErrorEnvelope]}}}
    op["responses"] = responses
    if not ep.auth:
        op["security"] = []
    return op


def _path_names(path: str) -> list[str]:
    return re.findall(r"\{(\w+)[^}]*\}", path)


def _openapi_path(path: str) -> str:
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


NOT_API = web.AppKey("openapi_not_api", set)


def not_api(app: web.Application) -> set[str]:
    """The paths (resources' canonical forms) of routes that are not the API, left out of the
    document: pages for people (the dashboard plugin). A plugin adds its own to this set."""
    return app.setdefault(NOT_API, set())


def spec(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of every route of `app` that declares an @endpoint."""
    routes = []
    hidden = app.get(NOT_API, set())
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None or route.resource.canonical in hidden:
            continue
        ep = getattr(route.handler, "__endpoint__", None) or _undeclared(route.handler)
        routes.append((route.method.lower(), route.resource.canonical, ep))
    models = {ErrorEnvelope}
    for _, _, ep in routes:
        models |= {m for m in (ep.data, ep.body, ep.query, ep.error_model, *ep.answers) if m is not None}
    ordered = sorted(models, key=lambda m: m.__name__)
    keyed, top = models_json_schema([(m, "validation") for m in ordered], ref_template=REF)
    refs = {m: keyed[(m, "validation")] for m in ordered}
    paths: dict[str, dict[str, Any]] = {}
    for method, path, ep in sorted(routes, key=lambda r: (r[1], r[0])):
        paths.setdefault(_openapi_path(path), {})[method] = _operation(method, path, ep, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "transcribe-gateway", "version": __version__,
                 "description": "Asynchronous transcription, compatible with the memories.ai transcription API "
                                f"(base path {API_BASE}), where every JSON answer is the envelope "
                                "{code, msg, data, success, failed}, and with OpenAI's transcription API "
                                "(base path /v1), whose errors are {error: {message, type, param, code}}."},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {}),
                       "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "Authorization",
                                                      "description": "the raw key, or `Bearer <key>`"}}},
        "security": [{"apiKey": []}],
    }
