"""server.max_audio_s: a small file that declares, or holds, hours of audio fails at the limit
for good, without the daemon's memory following the audio's length (how the audio is read:
tests/test_audio_blocks.py)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.audio import AudioError
from gateway.config import EngineConfig
from gateway.engine import LocalEngine, TranscribeRequest

from conftest import Gateway, daemon_sections, to_toml

RSS_LIMIT_MB = 1024
TEN_HOURS = 36000


def silent_flac(path: Path, seconds: float) -> Path:
    """The issue's bomb: silence at 8 kHz in FLAC frames of 65535 samples (72 KB for 10 hours)."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
                    "-t", str(seconds), "-c:a", "flac", "-frame_size", "65535", "-compression_level", "0",
                    str(path)], check=True)
    return path


def declaring(src: Path, dest: Path, samples: int) -> Path:
    """A copy of a FLAC file whose STREAMINFO declares `samples` samples in all (0 = unknown,
    as a FLAC written to a pipe says); the audio frames are left as they are."""
    data = bytearray(src.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    at = 8 + 10  # STREAMINFO: ... 20 bits rate, 3 channels, 5 bits per sample, 36 bits total samples
    packed = int.from_bytes(data[at:at + 8], "big")
    packed = packed & ~((1 << 36) - 1) | samples
    data[at:at + 8] = packed.to_bytes(8, "big")
    dest.write_bytes(bytes(data))
    return dest


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """Ten hours of silence declared truthfully, not at all, and as one minute."""
    out = tmp_path_factory.mktemp("bombs")
    honest = silent_flac(out / "ten-hours.flac", TEN_HOURS)
    return {"declared": honest,
            "undeclared": declaring(honest, out / "undeclared.flac", 0),
            "lying": declaring(honest, out / "lying.flac", 8000 * 60)}


# --- the engine and the daemon ---------------------------------------------------------


async def test_a_too_long_file_fails_before_the_engine_transcribes(bombs):
    engine = LocalEngine(EngineConfig())
    seen: list[float] = []
    try:
        with pytest.raises(AudioError, match=r"server.max_audio_s \(60 s\): decoding passed 60 s"):
            await engine.transcribe(TranscribeRequest(path=str(bombs["lying"]), max_audio_s=60), seen.append)
    finally:
        engine.close()
    assert set(seen) <= {0.0}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.mark.any_database
@pytest.mark.slow
async def test_hours_of_audio_fail_at_the_limit_and_the_daemon_stays_small_and_answering(
        daemon_factory, tmp_path, database_url, bombs):
    """The issue's 72 KB FLAC of 10 hours (declared, undeclared, declared as one minute) fails
    for good with a reason naming server.max_audio_s, while the daemon's RSS stays under 1 GB
    and /healthz answers; an hour of silence within the limit is transcribed, block by block."""
    hour = silent_flac(tmp_path / "hour.flac", 3600)
    daemon = daemon_factory(to_toml(daemon_sections(tmp_path, database_url)))
    daemon.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        gw = Gateway(url=f"http://127.0.0.1:{daemon.port}", config=None, http=http)
        await gw.wait_ready(timeout=120)
        submitted = {await gw.submit(asset_id=await gw.upload(path)): name
                     for name, path in [*bombs.items(), ("hour", hour)]}
        peak, answered, finished = 0.0, 0, {}
        deadline = time.monotonic() + 240
        while len(finished) < len(submitted):
            peak = max(peak, rss_mb(daemon.proc.pid))
            if peak > RSS_LIMIT_MB:
                daemon.kill()  # before it takes the machine's memory
                pytest.fail(f"the daemon's RSS reached {peak:.0f} MB")
            async with http.get(gw.url + "/healthz") as resp:
                assert resp.status == 200
                answered += 1
            for task_id in set(submitted) - set(finished):
                task = await gw.status(task_id)
                if task["status"] in ("completed", "failed"):
                    finished[task_id] = task
            assert time.monotonic() < deadline, {submitted[t]: t in finished for t in submitted}
            await asyncio.sleep(0.2)
        assert daemon.proc.poll() is None and answered >= len(submitted)

    by_name = {submitted[t]: task for t, task in finished.items()}
    limit = "the audio is longer than server.max_audio_s (14400 s): "
    assert by_name["declared"]["error"] == limit + "its metadata declares 36000 s"
    assert by_name["undeclared"]["error"] == limit + "decoding passed 14400 s"
    assert by_name["lying"]["error"] == limit + "decoding passed 14400 s (its metadata declares 60 s)"
    for name in bombs:
        assert by_name[name]["status"] == "failed" and by_name[name]["attempts"] == 1, by_name[name]  # no retry
    assert by_name["hour"]["status"] == "completed", by_name["hour"]
    assert by_name["hour"]["result"]["usage_metadata"]["duration"] == pytest.approx(3600, abs=0.01)
