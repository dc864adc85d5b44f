"""The JSON envelope of every answer: {"code", "msg", "data", "success", "failed"}."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def ok(data: Any = None, status: int = 200) -> web.Response:
    """A success envelope; `data` may be a pydantic model (gateway.schemas), dumped as JSON."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    body = {"code": "0000", "msg": "success", "data": data, "success": True, "failed": False}
    return web.json_response(body, status=status, dumps=dumps)


def error(status: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": str(status), "msg": msg, "data": None, "success": False, "failed": True}
    return web.json_response(body, status=status, dumps=dumps, headers=headers)
