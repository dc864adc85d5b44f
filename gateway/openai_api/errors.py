"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, the answer of every
failed request under /v1 (the envelope middleware chooses it by path: `gateway.envelope.error_for`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.envelope import dumps
from gateway.openai_api.answers import ErrorBody

# OpenAI's `type` by HTTP status: client mistakes are invalid_request_error, ours server_error
TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}
CODES = {401: "invalid_api_key", 404: "not_found", 413: "file_too_large", 504: "timeout"}


def error_type(status: int) -> str:
    return TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")


def body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The error body (also the data of a stream's error event)."""
    return ErrorBody.model_validate({"error": {"message": message, "type": error_type(status), "param": param,
                                               "code": code or CODES.get(status)}}).model_dump()


def error(status: int, message: str, *, param: str | None = None, code: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(body(status, message, param=param, code=code)), status=status, headers=headers,
                        content_type="application/json", charset="utf-8")
