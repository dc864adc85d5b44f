"""The event loop never waits for the disk or for a large rendering: a real daemon
(`serve --no-worker`) writes uploads from another thread (seen by strace: which thread made each
system call on the upload's file), as a worker writes a task's downloaded `url`, and keeps
answering /healthz while it renders the SRT of a 100,000-segment transcript (seen by order: the
health answer comes before the SRT's headers).
The figures (latency under load) are bench/loop.py's, not a test's."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from conftest import Gateway, daemon_sections, to_toml
from gateway.payloads import Outcome, Segment, build_payload

SEGMENTS = 100_000


@pytest.fixture
async def daemon(tmp_path, database_url, daemon_factory):
    sections = daemon_sections(tmp_path, database_url, server={"max_json_kb": 16384})
    d = daemon_factory(to_toml(sections), command=("serve", "--no-worker"))
    d.start()
    async with aiohttp.ClientSession() as http:
        gw = Gateway(url=f"http://127.0.0.1:{d.port}", config=None, http=http)
        await gw.wait_ready()
        yield d, gw


def threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def tracer_of(pid: int, tid: int) -> int:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return int(re.search(r"^TracerPid:\s+(\d+)", status, re.M).group(1))


async def traced_syscalls(pid: int, out: Path, action) -> list[tuple[int, str]]:
    """(thread id, strace line) of every system call `pid` made on a file while `action` ran."""
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed (apt-get install strace); .ci/run installs it")
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-y", "-e", "trace=%file,%desc", "-o", str(out),
                               "-p", str(pid)], stderr=subprocess.PIPE)
    try:
        for _ in range(200):  # every thread attached before anything is asked of the daemon
            if all(tracer_of(pid, tid) == tracer.pid for tid in threads(pid)):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"strace did not attach: {tracer.stderr.read1().decode() if tracer.poll() else ''}")
        await action()
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches; the daemon runs on
        tracer.wait(30)
    lines = out.read_text().splitlines()
    return [(int(line.split(None, 1)[0]), line.split(None, 1)[1]) for line in lines if line[:1].isdigit()]


async def test_an_upload_is_written_and_synced_off_the_event_loop(daemon, tmp_path):
    d, gw = daemon
    body = os.urandom(1 << 20)

    async def upload():
        form = aiohttp.FormData()
        form.add_field("file", body, filename="a.wav")
        status, answer = await gw.call("POST", "/upload", data=form)
        assert status == 200, answer

    calls = await traced_syscalls(d.proc.pid, tmp_path / "strace.txt", upload)
    on_file = [(tid, line) for tid, line in calls if ".part" in line]
    kinds = {line.split("(", 1)[0] for _, line in on_file}
    assert {"openat", "write", "fsync", "rename"} <= kinds, on_file[:20]  # the whole life of the upload's file
    on_loop = [line[:120] for tid, line in on_file if tid == d.proc.pid]  # the main thread runs the loop
    assert on_loop == [], f"{len(on_loop)} of {len(on_file)} calls on the upload's file ran on the event loop"


@pytest.mark.any_database
async def test_a_task_url_is_downloaded_off_the_event_loop(daemon, daemon_factory, media_server, speech_wav,
                                                           tmp_path, database_url):
    """A worker writes a task's `url` as an upload is written: every call on the downloaded file
    (open, write, close, unlink) made by a storage thread, none by the event loop."""
    d, gw = daemon
    sections = daemon_sections(tmp_path, database_url, server={"max_json_kb": 16384})
    worker = daemon_factory(to_toml(sections), command=("worker",))
    worker.start()
    warm = await gw.submit(asset_id=await gw.upload(speech_wav))  # once it is done, the worker's model is loaded
    assert (await gw.wait(warm, timeout=180))["status"] == "completed"

    async def download():
        task_id = await gw.submit(url=media_server("/speech.wav"))
        assert (await gw.wait(task_id, timeout=120))["status"] == "completed"

    calls = await traced_syscalls(worker.proc.pid, tmp_path / "strace.txt", download)
    temp_dir = str(Path(sections["storage"]["dir"]) / "tmp") + "/"
    on_file = [(tid, line) for tid, line in calls if temp_dir in line and ".url" in line]
    kinds = {line.split("(", 1)[0] for _, line in on_file}
    assert {"openat", "write", "close", "unlink"} <= kinds, on_file[:20]  # the whole life of the downloaded file
    on_loop = [line[:120] for tid, line in on_file if tid == worker.proc.pid]
    assert on_loop == [], f"{len(on_loop)} of {len(on_file)} calls on the downloaded file ran on the event loop"


def long_result(task_id: str) -> bytes:
    segments = tuple(Segment(i * 0.1, i * 0.1 + 0.09, f"Segment number {i} of a very long meeting.")
                     for i in range(SEGMENTS))
    outcome = Outcome(success=True, segments=segments, duration=SEGMENTS * 0.1)
    return json.dumps(build_payload(task_id, outcome, model="whisper-1", speaker=False)).encode()


@pytest.mark.any_database
async def test_healthz_answers_while_a_large_srt_is_rendered(daemon, tmp_path):
    d, gw = daemon
    (tmp_path / "x.wav").write_bytes(b"RIFF" + b"\0" * 64)
    task_id = await gw.submit(asset_id=await gw.upload(tmp_path / "x.wav"))  # no worker: stays queued
    status, body = await gw.call("POST", "/callbacks/local", data=long_result(task_id),
                                 headers={"Content-Type": "application/json"})
    assert status == 200, body

    srt_headers = asyncio.Event()

    async def srt() -> bytes:
        async with gw.http.get(f"{gw.base}/transcriptions/{task_id}/transcript.srt") as resp:
            srt_headers.set()
            assert resp.status == 200
            return await resp.read()

    rendering = asyncio.create_task(srt())
    await asyncio.sleep(0.1)  # the request reaches the daemon, which starts on it (seconds of work)
    async with aiohttp.ClientSession() as other:  # a connection of its own
        async with other.get(gw.url + "/healthz") as resp:
            assert resp.status == 200
    assert not srt_headers.is_set(), "/healthz waited for the SRT rendering to finish"
    text = (await rendering).decode()
    assert text.count(" --> ") == SEGMENTS and "\n100000\n02:46:39,900 --> 02:46:39,990\nSegment number 99999" in text
