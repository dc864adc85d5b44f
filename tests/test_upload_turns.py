"""Upload bodies take turns (server.max_concurrent_uploads, gateway/turns.py): beyond the limit
they wait, and a body that stops sending gives its turn away instead of holding it. What the
turns buy (/healthz latency under 200 concurrent uploads) is bench/loop.py's figure, not a test's."""

from __future__ import annotations

import asyncio
import re

from conftest import Gateway

BOUNDARY = "turns-test"
HEAD = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\n").encode()
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
PIECE = b"\0" * 65536


class Sender:
    """An upload whose body is sent piece by piece when the test says so (chunked encoding)."""

    def __init__(self, gw: Gateway):
        self.gw, self.queue, self.answer = gw, asyncio.Queue(), None

    async def body(self):
        yield HEAD
        while (piece := await self.queue.get()) is not None:
            yield piece
        yield TAIL

    async def _post(self):
        async with self.gw.http.post(self.gw.base + "/upload", data=self.body(),
                                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}) as r:
            self.answer = (r.status, await r.json())

    def start(self) -> "Sender":
        self.task = asyncio.create_task(self._post())
        return self

    def send(self, pieces: int = 1) -> None:
        for _ in range(pieces):
            self.queue.put_nowait(PIECE)

    async def finish(self) -> tuple[int, dict]:
        self.queue.put_nowait(None)
        await asyncio.wait_for(self.task, 30)
        return self.answer


async def gauges(gw: Gateway) -> dict[str, float]:
    async with gw.http.get(gw.url + "/metrics") as r:
        text = await r.text()
    return {name: float(v) for name, v in re.findall(r"^(tgw_uploads_\w+) (\S+)$", text, re.M)}


async def until(gw: Gateway, want: dict[str, float]) -> dict[str, float]:
    for _ in range(200):
        got = await gauges(gw)
        if all(got.get(k) == v for k, v in want.items()):
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"gauges never became {want}: {got}")


async def test_beyond_the_limit_uploads_wait_their_turn_and_all_arrive(start_gateway):
    gw = await start_gateway(server={"max_concurrent_uploads": 1})
    senders = [Sender(gw).start() for _ in range(3)]
    for s in senders:
        s.send()  # all three are sending; one is read, two wait
    await until(gw, {"tgw_uploads_receiving": 1, "tgw_uploads_waiting": 2})
    answers = []
    for s in senders:
        s.send(3)
        answers.append(await s.finish())
    assert [status for status, _ in answers] == [200, 200, 200], answers
    assert len({body["data"]["asset_id"] for _, body in answers}) == 3
    await until(gw, {"tgw_uploads_receiving": 0, "tgw_uploads_waiting": 0})


async def test_an_upload_that_stops_sending_gives_its_turn_away(start_gateway):
    gw = await start_gateway(server={"max_concurrent_uploads": 1})
    stalled = Sender(gw).start()
    stalled.send()
    await until(gw, {"tgw_uploads_receiving": 1})
    # It sends nothing more; after turns.IDLE_S the next upload gets the turn and completes.
    other = Sender(gw).start()
    other.send(2)
    status, body = await other.finish()
    assert status == 200, body
    assert not stalled.task.done()
    stalled.send(2)  # it resumes, queues for a turn again, and arrives whole
    status, body = await stalled.finish()
    assert status == 200, body


async def test_no_limit_reads_every_body_at_once(start_gateway):
    gw = await start_gateway(server={"max_concurrent_uploads": 0})
    senders = [Sender(gw).start() for _ in range(3)]
    for s in senders:
        s.send()
    answers = [await s.finish() for s in senders]
    assert [status for status, _ in answers] == [200, 200, 200], answers
    assert (await gauges(gw)).get("tgw_uploads_waiting", 0) == 0
