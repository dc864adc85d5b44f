"""Process-wide state belongs to the process's entry point, not to an app: several apps in one
process (as in these tests, or an embedding) must not change it or undo each other's."""

from __future__ import annotations

import gc

from gateway import server


async def test_an_app_leaves_the_garbage_collector_as_it_found_it(start_gateway):
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    first = await start_gateway()
    second = await start_gateway()
    for gw in (first, second):
        async with gw.http.get(gw.url + "/healthz") as resp:
            assert resp.status == 200
    assert gc.get_threshold() == thresholds  # while both run: no app tuned the process
    assert gc.get_freeze_count() <= frozen


def test_the_entry_point_settles_memory_once_started():
    thresholds = gc.get_threshold()
    try:
        server.settle_memory()
        assert gc.get_threshold() == server.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
