"""One wording of pydantic's validation errors, "where: what", for every place that reports one
(request bodies, query strings, callback payloads, the configuration, provider and plugin tables)."""

from __future__ import annotations

from typing import Any, Mapping

# pydantic error types said in our words; other errors keep pydantic's message
MESSAGES: Mapping[str, str] = {"extra_forbidden": "unknown key"}


def location(loc: tuple, *, root: tuple = (), brackets: bool = False, empty: str = "") -> str:
    """`root` + `loc` as a dotted path ("a.b.0"; with `brackets`, "a.b[0]"), `empty` if both are empty."""
    out = ""
    for p in (*root, *loc):
        out += f"[{p}]" if brackets and isinstance(p, int) else (f".{p}" if out else str(p))
    return out or empty


def describe_error(e: Mapping[str, Any], *, root: tuple = (), brackets: bool = False, empty: str = "",
                   messages: Mapping[str, str] = MESSAGES, strip_value_error: bool = False) -> str:
    """One error of `ValidationError.errors()` as "where: what"."""
    msg = messages.get(e["type"]) or e["msg"]
    if strip_value_error:
        msg = msg.removeprefix("Value error, ")
    return f"{location(tuple(e['loc']), root=root, brackets=brackets, empty=empty)}: {msg}"


def describe_validation_error(exc, prefix: str = "", **how) -> str:
    """The first error of a pydantic ValidationError as `prefix` + "where: what" (see describe_error)."""
    return prefix + describe_error(exc.errors()[0], **how)
