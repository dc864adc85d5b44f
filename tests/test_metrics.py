"""GET /metrics: Prometheus text that a real parser reads, with counts that follow the work done.

Process counters are shared by every gateway this test process starts, so the tests compare
them before and after; the task and delivery gauges come from the test's own fresh database.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_delivery

API = "/serve/api/v2"


async def scrape(gw) -> dict[tuple, float]:
    async with gw.http.get(gw.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")  # Prometheus text format
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_a_task_through_the_gateway(start_gateway, webhook, speech_wav):
    gw = await start_gateway()
    before = await scrape(gw)
    assert value(before, "tgw_tasks", status="queued", provider="local") == 0
    assert value(before, "tgw_queue_depth") == 0

    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), callback_url=webhook.url)
    task = await gw.wait(task_id)
    await wait_delivery(gw, task_id, "delivered")
    duration = task["result"]["usage_metadata"]["duration"]

    # The same result again through the callback door: a duplicate.
    status, body = await gw.call("POST", "/callbacks/local", json={
        "code": "0000", "message": "SUCCESS", "task_id": task_id,
        "data": {"data": task["result"], "msg": "transcription completed", "success": True}})
    assert (status, body["data"]["outcome"]) == (200, "duplicate")
    await gw.call("GET", "/no/such/route")

    after = await scrape(gw)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "tgw_tasks", status="completed", provider="local") == 1
    assert value(after, "tgw_tasks", status="failed", provider="local") == 0
    assert value(after, "tgw_queue_depth") == 0
    assert value(after, "tgw_deliveries", kind="webhook", status="delivered") == 1
    assert value(after, "tgw_deliveries", kind="webhook", status="dead") == 0

    assert delta("tgw_ingested_total", provider="local", outcome="accepted") == 1
    assert delta("tgw_ingested_total", provider="local", outcome="duplicate") == 1
    assert delta("tgw_job_duration_seconds_count", provider="local", outcome="completed") == 1
    assert abs(delta("tgw_job_audio_seconds_sum", provider="local") - duration) < 0.01
    assert delta("tgw_job_realtime_factor_count", provider="local") == 1
    assert delta("tgw_delivery_attempts_total", kind="webhook", outcome="delivered") == 1
    assert delta("tgw_http_requests_total", method="POST", route=f"{API}/upload", status="200") == 1
    assert delta("tgw_http_requests_total", method="GET", route=f"{API}/transcriptions/{{task_id}}",
                 status="200") >= 1
    assert delta("tgw_http_requests_total", method="GET", route="unmatched", status="404") == 1


async def test_failed_deliveries_and_tasks_are_counted(start_gateway, webhook, tmp_path):
    webhook.responses = [500] * 10
    gw = await start_gateway(webhooks={"max_attempts": 2})
    before = await scrape(gw)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not a recording\n" * 50)
    task_id = await gw.submit(asset_id=await gw.upload(not_audio), callback_url=webhook.url)
    await gw.wait(task_id)
    await wait_delivery(gw, task_id, "dead")
    after = await scrape(gw)
    assert value(after, "tgw_tasks", status="failed", provider="local") == 1
    assert value(after, "tgw_deliveries", kind="webhook", status="dead") == 1
    retried = value(after, "tgw_delivery_attempts_total", kind="webhook", outcome="retry") - \
        value(before, "tgw_delivery_attempts_total", kind="webhook", outcome="retry")
    died = value(after, "tgw_delivery_attempts_total", kind="webhook", outcome="dead") - \
        value(before, "tgw_delivery_attempts_total", kind="webhook", outcome="dead")
    assert (retried, died) == (1, 1)
    failed_jobs = value(after, "tgw_job_duration_seconds_count", provider="local", outcome="failed") - \
        value(before, "tgw_job_duration_seconds_count", provider="local", outcome="failed")
    assert failed_jobs == 1
