"""The README is real: its Python examples run unchanged but for the base URL and the file (the
memories API's says what is wrong on an error answer; the `openai` client's gets segments), and
every `transcribe-gateway` command in it names a command, options and files that exist in a
fresh clone."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
USER_FILES = ("meeting.mp3", "meeting.wav")  # the reader's own recordings


def python_example(marker: str = 'BASE_URL = "http://127.0.0.1:8000/serve/api/v2"') -> str:
    """The README's Python block holding `marker`."""
    [block] = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if marker in b]
    return block


OPENAI_EXAMPLE = 'base_url="http://127.0.0.1:8000/v1"'


async def run_example(tmp_path: Path, gateway_url: str, audio: Path, marker: str | None = None) -> tuple[int, str, str]:
    code = python_example(*filter(None, [marker]))
    assert '"meeting.wav"' in code
    code = code.replace("http://127.0.0.1:8000", gateway_url).replace('"meeting.wav"', repr(str(audio)))
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.any_database
async def test_readme_python_example_runs_against_the_gateway(gateway, speech_wav, tmp_path):
    code, out, err = await run_example(tmp_path, gateway.url, speech_wav)
    assert code == 0, err
    assert "gateway" in out.lower() and "0.00" in out


async def test_readme_openai_example_runs_against_the_gateway(gateway, speech_wav, tmp_path):
    code, out, err = await run_example(tmp_path, gateway.url, speech_wav, marker=OPENAI_EXAMPLE)
    assert code == 0, err
    assert "gateway" in out.lower() and out.startswith("   0.00")


async def test_readme_python_example_says_what_is_wrong_on_an_error_answer(start_gateway, tmp_path):
    junk = tmp_path / "notes.wav"
    junk.write_text("this is not audio at all\n" * 50)
    secured = await start_gateway(server={"api_keys": ["k-1"]})  # the example's key is not one of them
    code, out, err = await run_example(tmp_path, secured.url, junk)
    assert (code, out, err) == (1, "", "POST /upload: 401 invalid API key\n")

    gw = await start_gateway()  # open: the upload goes in, the task fails (it is not audio)
    code, out, err = await run_example(tmp_path, gw.url, junk)
    assert code == 1 and out == "" and "Traceback" not in err, err
    assert re.fullmatch(r"task [0-9a-f]{32} failed: .*could not be decoded.*\n", err), err


def readme_commands() -> list[list[str]]:
    """Every `transcribe-gateway …` line of the README's bash blocks, as arguments."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            if line.startswith("transcribe-gateway "):
                commands.append(shlex.split(line, comments=True)[1:])
    return commands


def command_of(args: list[str]) -> tuple[click.Command, list[str]]:
    from gateway.cli import main

    command, path = main, []
    while isinstance(command, click.Group):
        if command.invoke_without_command and (not args or args[0].startswith("-")):
            break  # a group that is a command of its own too (`transcribe-gateway models --json`)
        name, *args = args
        path.append(name)
        command = command.get_command(click.Context(main), name)
        assert command is not None, f"README: no command `transcribe-gateway {' '.join(path)}`"
    return command, args


def test_readme_commands_exist_as_written_in_a_fresh_clone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh clone: the repository's files, and the reader's recording
    (tmp_path / "config").symlink_to(ROOT / "config")
    for name in USER_FILES:
        (tmp_path / name).write_bytes(b"")
    commands = readme_commands()
    assert len(commands) >= 15 and ["serve"] in commands
    for args in commands:
        command, rest = command_of(args)
        try:
            command.make_context(" ".join(args), list(rest))  # unknown options and missing files fail here
        except click.ClickException as exc:
            raise AssertionError(f"README: `transcribe-gateway {shlex.join(args)}`: {exc.format_message()}")
        for flag, value in zip(rest, rest[1:]):
            if flag == "--config":
                assert Path(value).is_file(), f"README: `transcribe-gateway {shlex.join(args)}`: no file {value}"
