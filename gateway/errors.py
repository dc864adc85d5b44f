"""Errors that reach the client as an envelope with their HTTP status."""

from __future__ import annotations


class ApiError(Exception):
    """An answer to the client: HTTP `status` and a message that says exactly what is wrong."""

    status = 400

    def __init__(self, message: str, status: int | None = None, *, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.param = param  # the request field at fault (OpenAI's error `param`; the envelope says it in `msg`)
        self.code = code  # a machine-readable reason (OpenAI's error `code`), e.g. "model_not_found"


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class PayloadTooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    status = 503


class InsufficientStorage(ApiError):
    status = 507
