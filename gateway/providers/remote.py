"""HTTP to a remote provider: one request, its answer, and what its status means for the task."""

from __future__ import annotations

import asyncio
import json
from typing import Any, BinaryIO

import aiohttp

from gateway.providers import PermanentError, RetryableError

RETRYABLE_4XX = {408, 409, 425, 429}


def file_form(file: BinaryIO, filename: str, **fields: Any) -> aiohttp.FormData:
    """A multipart body with the audio file (an open file, streamed) and plain fields (a list: the
    field once per value, e.g. `timestamp_granularities[]`; None: left out)."""
    form = aiohttp.FormData(quote_fields=False)
    for key, value in fields.items():
        for one in value if isinstance(value, list) else [value]:
            if one is not None:
                form.add_field(key, str(one))
    form.add_field("file", file, filename=filename)
    return form


async def request(http: aiohttp.ClientSession, service: str, step: str, url: str, *, timeout_s: float,
                  **kwargs) -> tuple[int, Any]:
    """POST and return (status, JSON body or text); network errors and timeouts are retryable."""
    try:
        async with http.post(url, timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs) as resp:
            text = await resp.text(errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return resp.status, body
    except asyncio.TimeoutError:
        raise RetryableError(f"{service} {step}: no answer within {timeout_s:g}s") from None
    except aiohttp.ClientError as exc:
        raise RetryableError(f"{service} {step}: {type(exc).__name__}: {exc}") from None


def raise_for_status(service: str, step: str, status: int, message: str) -> None:
    """4xx (but 408/409/425/429): the task fails with the service's message; 5xx and those: retried."""
    if status < 400:
        return
    reason = f"{service} {step}: HTTP {status}: {message}"[:1000]
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        raise PermanentError(reason)
    raise RetryableError(reason)
