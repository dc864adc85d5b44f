"""GET /openapi.json describes every route (the memories API's and the OpenAI-compatible /v1),
and schemathesis, fuzzing the live daemon from that description, finds no server error and no
answer that differs from the description."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from conftest import Gateway, daemon_sections, to_toml
from gateway.openapi import NOT_API

API_KEY = "k-fuzz-3f2e1d"


async def test_every_route_is_described(gateway):
    async with gateway.http.get(gateway.url + "/openapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        spec = await resp.json()
    assert spec["openapi"].startswith("3.1")
    described = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    served = set()
    pages = gateway.app.get(NOT_API, set())
    assert "/tasks" in pages  # the dashboard's pages are not the API
    for route in gateway.app.router.routes():
        if route.method == "HEAD" or route.resource is None or route.resource.canonical in pages:
            continue
        served.add((route.method, route.resource.canonical))
    assert served == described, (served ^ described)
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and "200" in op["responses"], (method, path)
            for code, answer in op["responses"].items():
                assert answer["content"], (method, path, code)
            if path.startswith("/v1/"):  # the OpenAI-compatible API: OpenAI's error body, not the envelope
                errors = [a for code, a in op["responses"].items() if code.startswith(("4", "5"))]
                assert errors and all(a["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
                                      for a in errors), (method, path)


def schemathesis_cli() -> str:
    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    if not Path(st).exists():
        pytest.fail("schemathesis is not installed (pip install -e '.[test]')")
    return st


@pytest.mark.slow
@pytest.mark.needs_netns  # it submits whatever `url` and `callback_url` the generator invents
async def test_schemathesis_finds_no_server_error_and_no_drift(tmp_path, database_url, daemon_factory, speech_wav):
    """The daemon runs with the default URL policy, so generated URLs are refused (4xx) or, when
    they name a public address, tried by the worker: inside the suite's network namespace that
    fails at once with "network unreachable", so nothing can leave the machine."""
    sections = daemon_sections(tmp_path, database_url, log={"format": "json", "level": "warning"},
                               server={"api_keys": [API_KEY], "allow_private_urls": False, "allow_private_hosts": []})
    daemon = daemon_factory(to_toml(sections))
    daemon.start()
    base = f"http://127.0.0.1:{daemon.port}"
    async with aiohttp.ClientSession(headers={"Authorization": API_KEY}) as http:
        gw = Gateway(url=base, config=None, http=http)
        await gw.wait_ready()
        await gw.upload(speech_wav)  # something to find
    report = tmp_path / "schemathesis"
    # One worker: with two threads, Python 3.11.7's ast module can fail hypothesis's code
    # generation with "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905).
    proc = subprocess.run(
        [schemathesis_cli(), "run", f"{base}/openapi.json", "--header", f"Authorization: {API_KEY}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance,response_headers_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "50", "--seed", "20261125",
         "--workers", "1", "--request-timeout", "20", "--no-color", "--suppress-health-check", "all",
         "--generation-database", "none", "--report", "junit", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    daemon.stop()
    server_errors = [line for line in daemon.log_path.read_text().splitlines() if "http.unhandled" in line]
    assert proc.returncode == 0 and not server_errors, (
        proc.stdout[-12000:] + proc.stderr[-2000:] + "\n".join(server_errors[:5]))
