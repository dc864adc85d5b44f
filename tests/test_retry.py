"""The one retry policy: Backoff (exponential, capped, jittered) and Retry-After in seconds or
as an HTTP date."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from gateway.retry import Backoff, retry_after_s

NOW = datetime(2026, 12, 1, 14, 0, 0, tzinfo=timezone.utc)


def test_backoff_without_jitter_is_the_ceiling():
    backoff = Backoff(base_s=5, max_s=600, jitter=0)
    assert [backoff.delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 320, 600]
    assert Backoff(base_s=0, max_s=600).delay(3) == 0  # jobs.retry_backoff_s = 0: at once
    assert Backoff(base_s=2, max_s=60, jitter=0).delay(5000) == 60  # no overflow past the cap


def test_full_jitter_spans_zero_to_the_ceiling():
    rng = random.Random(3)
    delays = [Backoff(base_s=8, max_s=600, jitter=1).delay(1, rng) for _ in range(200)]
    assert min(delays) < 1 and 7 < max(delays) <= 8


@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0), (" 3 ", 3.0), ("1.5", 1.5), ("0", 0.0), ("-4", 0.0),
    ("Tue, 01 Dec 2026 14:00:07 GMT", 7.0),  # IMF-fixdate, 7 s ahead
    ("Tuesday, 01-Dec-26 14:01:00 GMT", 60.0),  # obsolete RFC 850 form
    ("Tue Dec  1 14:00:30 2026", 30.0),  # obsolete asctime form (no zone: GMT)
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: at once
    (None, None), ("", None), ("soon", None), ("nan", None), ("inf", None), ("Tue, 99 Foo 2026", None),
])
def test_retry_after_reads_seconds_and_http_dates(value, seconds):
    assert retry_after_s(value, now=NOW) == seconds


def test_retry_after_date_defaults_to_now():
    ahead = (datetime.now(timezone.utc) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 28 <= retry_after_s(ahead) <= 30
