"""The README's Python example is real: it runs unchanged but for the base URL and the file."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_example() -> str:
    [block] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return block


async def test_readme_python_example_runs_against_the_gateway(gateway, speech_wav, tmp_path):
    code = python_example()
    assert 'BASE_URL = "http://127.0.0.1:8000/serve/api/v2"' in code and '"meeting.wav"' in code
    code = code.replace("http://127.0.0.1:8000", gateway.url).replace('"meeting.wav"', repr(str(speech_wav)))
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert "gateway" in out.decode().lower() and "0.00" in out.decode()
