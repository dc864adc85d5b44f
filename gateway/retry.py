"""The one retry policy of tasks and deliveries: `Backoff` (exponential, capped, jittered) and
`retry_after_s`, a receiver's Retry-After header read once (delta-seconds or an HTTP date)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    """Retry n (1-based) waits a random time between c × (1 - jitter) and c, where
    c = min(max_s, base_s × 2^(n-1)); jitter 0.5 is "equal jitter", 0 none, 1 full."""

    base_s: float
    max_s: float
    jitter: float = 0.5

    def ceiling(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * 2.0 ** min(max(attempt - 1, 0), 64))  # 2^64: past any cap

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        c = self.ceiling(attempt)
        return c * (1 - self.jitter) + (rng or random).random() * c * self.jitter


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header (RFC 9110 §10.2.3) in seconds from `now`: delta-seconds, or an
    HTTP date (one in the past is 0); None if absent or unreadable. The caller caps it."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
        when = when.replace(tzinfo=timezone.utc)
    return max((when - (now or datetime.now(timezone.utc))).total_seconds(), 0.0)
