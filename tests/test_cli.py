"""The `transcribe-gateway` command against a real running gateway: submit, status, db upgrade,
and errors as one clear line with a non-zero exit code."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import select
import signal
import socket
import struct
import sys
import termios
import time

import click

from conftest import ECHO, count_rows, free_port
from fakes import callback_payload
from tgw_echo import script_wav


async def cli(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_submit_wait_prints_the_transcript(gateway, speech_script):
    code, out, err = await cli("submit", str(speech_script), "--model", ECHO, "--wait", "--url", gateway.url)
    assert code == 0, err
    assert out.strip().splitlines() == ["[00:00.00 - 00:02.00] Hello, how are you today?",
                                        "[00:02.00 - 00:04.00] We are testing the transcription gateway."]


async def test_submit_speaker_labels_lines_and_passes_the_speaker_hints(gateway, speech_script):
    code, out, err = await cli("submit", str(speech_script), "--model", ECHO, "--wait", "--speaker",
                               "--max-speakers", "2", "--url", gateway.url)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines and all("] SPEAKER_00: " in line for line in lines)
    code, _, err = await cli("submit", str(speech_script), "--speaker", "--min-speakers", "3", "--max-speakers", "2",
                             "--url", gateway.url)
    assert code == 1 and "400 min_speakers: 3 is greater than max_speakers (2)" in err
    code, _, err = await cli("submit", str(speech_script), "--num-speakers", "2", "--url", gateway.url)
    assert code == 1 and "400 num_speakers: only meaningful with speaker=true" in err


async def test_submit_speaker_turns_prints_who_spoke_when(gateway, tmp_path):
    """--speaker-turns labels speakers too; a voice heard but not transcribed is in the turns only."""
    wav = script_wav(tmp_path / "turns.wav", "SPEAKER_00: Good morning.\nSPEAKER_01: [mm-hm]\n"
                                             "SPEAKER_00: Shall we start?", seconds=6)
    code, out, err = await cli("submit", str(wav), "--model", ECHO, "--wait", "--speaker-turns", "--url", gateway.url)
    assert code == 0, err
    assert out.strip().splitlines() == ["[00:00.00 - 00:02.00] SPEAKER_00: Good morning.",
                                        "[00:04.00 - 00:06.00] SPEAKER_00: Shall we start?", "",
                                        "who spoke when:", "[00:00.00 - 00:02.00] SPEAKER_00",
                                        "[00:02.00 - 00:04.00] SPEAKER_01", "[00:04.00 - 00:06.00] SPEAKER_00"]


async def test_submit_known_speakers_label_speakers_and_pass_the_names(gateway, speech_script):
    code, _, err = await cli("submit", str(speech_script), "--model", ECHO, "--known-speaker", "Nobody",
                             "--url", gateway.url)
    assert code == 1 and "400 known_speakers: no enrolled speaker named 'Nobody'" in err  # asked of the gateway
    code, out, err = await cli("submit", str(speech_script), "--model", ECHO, "--all-known-speakers", "--wait",
                               "--url", gateway.url)
    assert code == 0, err
    assert all("] SPEAKER_00: " in line for line in out.strip().splitlines())  # none enrolled: labels only
    code, _, err = await cli("submit", str(speech_script), "--known-speaker", "Ann", "--all-known-speakers",
                             "--url", gateway.url)
    assert code == 2 and "give --known-speaker NAME or --all-known-speakers, not both" in err


async def test_submit_json_then_status(gateway, speech_script, webhook):
    code, out, err = await cli("submit", str(speech_script), "--model", ECHO, "--json", "--url", gateway.url,
                               "--callback-url", webhook.url)
    assert code == 0, err
    task_id = json.loads(out)["task_id"]
    await gateway.wait(task_id)
    await webhook.wait_for(1)
    code, out, err = await cli("status", task_id, "--json", "--url", gateway.url)
    assert code == 0, err
    status = json.loads(out)
    assert status["status"] == "completed" and status["result"]["data"]
    code, out, _ = await cli("status", task_id, "--url", gateway.url)
    assert code == 0 and "gateway" in out.lower()


async def test_submit_sends_the_file_name_as_it_is(start_gateway, speech_script, tmp_path):
    """As curl and requests do: not percent-encoded (the name stored was `board%20meeting.txt`)."""
    gw = await start_gateway(worker=False)
    path = tmp_path / "board meeting é.txt"
    path.write_bytes(speech_script.read_bytes())
    code, out, err = await cli("submit", str(path), "--json", "--url", gw.url)
    assert code == 0, err
    task = await gw.status(json.loads(out)["task_id"])
    async with gw.http.get(f"{gw.base}/{task['asset_id']}/download") as resp:
        assert resp.headers["Content-Disposition"] == "attachment; filename*=UTF-8''board%20meeting%20%C3%A9.txt"


async def test_submit_wait_json_reports_a_failed_task(gateway, tmp_path):
    junk = tmp_path / "notes.wav"
    junk.write_text("this is not audio at all\n" * 50)
    code, out, _ = await cli("submit", str(junk), "--wait", "--json", "--url", gateway.url)
    assert code == 1
    task = json.loads(out)
    assert task["status"] == "failed" and "could not be decoded" in task["error"]


async def test_errors_are_one_line_with_nonzero_exit(gateway, speech_wav, start_gateway):
    code, _, err = await cli("submit", str(speech_wav), "--model", "nope", "--url", gateway.url)
    assert code == 1
    assert err.strip().splitlines() == [
        "Error: POST /transcriptions/async-generate-audio: 400 model: unknown model 'nope'; valid models: echo, whisper-1"]

    code, _, err = await cli("status", "0" * 32, "--url", gateway.url)
    assert code == 1 and err.strip().splitlines() == [
        f"Error: GET /transcriptions/{'0' * 32}: 404 task '{'0' * 32}' not found"]

    port = free_port()
    code, _, err = await cli("status", "x", "--url", f"http://127.0.0.1:{port}")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"Error: cannot reach the gateway at http://127.0.0.1:{port}")

    secured = await start_gateway(server={"api_keys": ["s3cret"]})
    code, _, err = await cli("status", "x", "--url", secured.url)
    assert code == 1 and "401 missing Authorization header" in err
    code, out, err = await cli("submit", str(speech_wav), "--model", ECHO, "--url", secured.url, "--api-key", "s3cret")
    assert code == 0 and len(out.strip()) == 32, err


async def test_db_upgrade_creates_the_schema(tmp_path, database_url):
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[database]\nurl = "{database_url}"\n')
    code, out, err = await cli("db", "upgrade", "--config", str(cfg))
    assert code == 0, err
    assert "is at revision head" in out
    assert await count_rows(database_url, "SELECT count(*) FROM task") == 0


async def test_db_downgrade_reverts_to_a_revision_and_upgrade_returns(tmp_path, database_url):
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[database]\nurl = "{database_url}"\n')
    assert (await cli("db", "upgrade", "--config", str(cfg)))[0] == 0
    code, out, err = await cli("db", "downgrade", "0001", "--config", str(cfg))
    assert code == 0 and "is at revision 0001" in out, err
    assert await count_rows(database_url, "SELECT version_num FROM alembic_version") == "0001"
    assert (await cli("db", "upgrade", "--config", str(cfg)))[0] == 0
    assert await count_rows(database_url, "SELECT count(*) FROM task") == 0


async def test_a_bad_environment_variable_is_one_line_and_help_still_works():
    for name, value, why in (("TGW_SERVER__PROT", "9000", "unknown key"),
                             ("TGW_SERVER__PORT", "abc", "Input should be a valid integer, unable to parse string "
                                                         "as an integer")):
        env = dict(os.environ, **{name: value})
        code, out, err = await cli("--help", env=env)
        assert code == 0 and "Usage:" in out and not err, err
        code, _, err = await cli("serve", env=env)
        key = name.removeprefix("TGW_").replace("__", ".").lower()
        assert code == 1 and err.splitlines() == [f"Error: invalid configuration: {key}: {why} (from {name})"]
        code, _, err = await cli("search", "budget", env=env)  # a plugin's command: not loaded, and why
        assert code == 1 and len(err.splitlines()) == 1 and f"(from {name})" in err, err


async def test_a_port_in_use_is_one_line_and_nothing_starts(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "g.db"}"\n[storage]\ndir = "{tmp_path / "assets"}"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await cli("serve", "--config", str(cfg), "--port", str(port))
    assert code == 1 and err.splitlines() == [f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"], err
    assert not (tmp_path / "g.db").exists()  # refused before the database was opened or work claimed


def test_every_option_has_help_text():
    from gateway.cli import main

    def commands(group, prefix=()):
        for name, command in group.commands.items():
            yield prefix + (name,), command
            if isinstance(command, click.Group):
                yield from commands(command, prefix + (name,))

    missing = [f"{' '.join(path)} {param.opts[0]}" for path, command in commands(main)
               for param in command.params if isinstance(param, click.Option) and not param.help]
    assert missing == []
    assert {" ".join(path) for path, _ in commands(main)} >= {"list", "search", "db upgrade"}


async def test_list_filters_by_status_and_prints_json(start_gateway, speech_wav):
    gw = await start_gateway(worker=False)  # tasks stay queued; one is completed through the callback door
    asset_id = await gw.upload(speech_wav)
    ids = [await gw.submit(asset_id=asset_id) for _ in range(3)]
    status, body = await gw.call("POST", "/callbacks/local", json=callback_payload(ids[1], "whisper-1", False))
    assert status == 200, body

    code, out, err = await cli("list", "--json", "--url", gw.url)
    assert code == 0, err
    assert [t["task_id"] for t in json.loads(out)] == ids[::-1]
    code, out, err = await cli("list", "--status", "queued", "--url", gw.url)
    assert code == 0, err
    assert [line.split()[:2] for line in out.splitlines()] == [[ids[2], "queued"], [ids[0], "queued"]]
    code, out, err = await cli("list", "--status", "completed", "--limit", "1", "--json", "--url", gw.url)
    assert code == 0 and [t["task_id"] for t in json.loads(out)] == [ids[1]], err
    code, out, err = await cli("list", "--limit", "2", "--json", "--url", gw.url)
    assert code == 0 and [t["task_id"] for t in json.loads(out)] == ids[:0:-1], err
    code, out, err = await cli("list", "--status", "failed", "--url", gw.url)
    assert code == 0 and out == "" and err == "no tasks\n"


async def test_url_without_scheme_or_with_the_api_path_is_accepted(start_gateway, speech_wav):
    gw = await start_gateway(worker=False)
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav))
    for url in (gw.url.removeprefix("http://"), gw.url + "/serve/api/v2", gw.url + "/serve/api/v2/"):
        code, out, err = await cli("status", task_id, "--url", url)
        assert (code, out, err) == (0, f"task {task_id}: queued (0%)\n", ""), url
    code, _, err = await cli("status", task_id, "--url", "ftp://127.0.0.1")
    assert code == 1 and err.splitlines() == [
        "Error: --url 'ftp://127.0.0.1': give the gateway's address as http(s)://host[:port], e.g. http://127.0.0.1:8000"]


async def read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    """What a terminal (the master side of a pty) shows, until `needle` appears."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, seen
        ready, _, _ = await asyncio.to_thread(select.select, [fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the other side closed
                break
    return seen


async def test_wait_shows_the_whole_task_id_and_ctrl_c_says_the_task_keeps_running(start_gateway, speech_wav):
    gw = await start_gateway(worker=False)  # the task stays queued while the command waits
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 wide
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "submit", str(speech_wav), "--wait", "--url", gw.url,
        stdout=asyncio.subprocess.PIPE, stderr=slave)
    os.close(slave)
    try:
        bar = (await read_until(master, b"queued")).decode()
        status, page = await gw.call("GET", "/transcriptions")
        [task] = page["data"]["items"]
        assert f"{task['task_id']} queued" in bar, bar  # the whole id: tasks made together share the first 8 hex
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
        said = (await read_until(master, b"keeps running")).decode()
    finally:
        os.close(master)
    assert code == 130
    assert (f"stopped waiting; task {task['task_id']} keeps running on the gateway "
            f"(transcribe-gateway status {task['task_id']})") in said.replace("\r\n", "\n"), said
    assert "Aborted" not in said
    assert (await gw.status(task["task_id"]))["status"] == "queued"
