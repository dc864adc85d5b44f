"""The JSON envelope of every answer: {"code", "msg", "data", "success", "failed"}."""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME  # keys and datetimes as str() spells them


def dumps(obj: Any) -> bytes:
    """Compact JSON, non-ASCII as it is, anything else as str(obj). What orjson refuses (integers
    beyond 64 bits, lone surrogates: in a result stored before the door refused them) goes
    through json, every non-ASCII character escaped."""
    try:
        return orjson.dumps(obj, default=str, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(obj, default=str, separators=(",", ":")).encode()


def ok(data: Any = None, status: int = 200) -> web.Response:
    """A success envelope; `data` may be a pydantic model (gateway.schemas), dumped as JSON."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return _json({"code": "0000", "msg": "success", "data": data, "success": True, "failed": False}, status)


def error(status: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"code": str(status), "msg": msg, "data": None, "success": False, "failed": True}, status, headers)


def error_for(path: str, status: int, msg: str, *, headers: dict[str, str] | None = None,
              param: str | None = None, code: str | None = None) -> web.Response:
    """The error answer for a request to `path`: OpenAI's error body under /v1, else the envelope.
    The one place every error answer is made (handlers' ApiErrors, the auth middleware, the HTTP
    server's own refusals)."""
    from gateway.openai_api import V1, errors

    if path == V1 or path.startswith(V1 + "/"):
        return errors.error(status, msg, param=param, code=code, headers=headers)
    return error(status, msg, headers)


def _json(body: dict, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(body), status=status, headers=headers, content_type="application/json",
                        charset="utf-8")
