"""Screenshots of every dashboard page, at desktop width (1280 px) and at 360 px, into this folder.

    .venv/bin/python docs/screenshots/make.py     # from the checkout; needs Debian's chromium

It starts a gateway of its own (temporary folder, the test suite's echo provider, so no model
runs), fills it with a few transcripts, signs in and photographs each page. Nothing leaves the
machine: chromium makes no name look-ups, and requests to other origins are aborted."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "echo")]

from playwright.sync_api import sync_playwright  # noqa: E402

from conftest import NO_DNS, test_config  # noqa: E402
from threaded import ThreadedGateway  # noqa: E402
from tgw_echo import script_wav  # noqa: E402

KEY = "screenshot-key"
MEETING = """SPEAKER_00: Good morning, everyone. Let's start with the quarterly numbers.
SPEAKER_01: Sales in the northern region grew by twelve percent.
SPEAKER_01: The south stayed flat, mostly because of the delayed launch.
SPEAKER_00: Right. When can we expect the launch now?
SPEAKER_01: [mm-hm]
SPEAKER_02: Engineering says the second week of March, if the migration finishes on time.
SPEAKER_00: And the two open issues?
SPEAKER_02: Both should be fixed by Friday.
SPEAKER_01: Marketing will prepare the spring campaign around that date.
SPEAKER_00: Good. Please submit your travel expenses before the end of the month."""
INTERVIEW = """SPEAKER_00: Thanks for joining us today.
SPEAKER_01: Happy to be here. The launch went better than we hoped."""
WIDTHS = {"desktop": (1280, 860), "360": (360, 780)}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tgw-shots-"))
    cfg = test_config(tmp, f"sqlite:///{tmp / 'gateway.db'}", server={"api_keys": [KEY]}, log={"level": "warning"})
    gw = ThreadedGateway(cfg).start()
    try:
        task_ids = [make_task(gw, tmp, name, script) for name, script in
                    (("interview", INTERVIEW), ("meeting", MEETING))]
        shoot(gw, task_ids[-1])
    finally:
        gw.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def make_task(gw: ThreadedGateway, tmp: Path, name: str, script: str) -> str:
    path = script_wav(tmp / f"{name}.wav", script, seconds=2 * len(script.splitlines()))

    async def make(client):
        task_id = await client.submit(asset_id=await client.upload(path), model="echo", speaker=True,
                                      speaker_turns=True)
        await client.wait(task_id)
        return task_id

    return gw.run(gw.api(make))


def shoot(gw: ThreadedGateway, task_id: str) -> None:
    pages = {"sign-in": "/", "upload": "/", "tasks": "/tasks", "task": f"/tasks/{task_id}?t=4",
             "search": "/search?q=launch", "status": "/status"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=[NO_DNS])
        for label, (width, height) in WIDTHS.items():
            context = browser.new_context(viewport={"width": width, "height": height})
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(gw.url)
                          else route.abort())
            page = context.new_page()
            for name, path in pages.items():
                page.goto(gw.url + path)
                if name == "sign-in":
                    page.screenshot(path=HERE / f"{name}-{label}.png", full_page=True)
                    page.fill("input[name=api_key]", KEY)
                    page.click("button[type=submit]")
                    page.wait_for_url(gw.url + "/")
                    continue
                if name == "task":
                    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
                    page.locator("#seg-2").scroll_into_view_if_needed()
                page.screenshot(path=HERE / f"{name}-{label}.png", full_page=True)
            context.close()
        browser.close()
    print(f"screenshots written to {HERE}")


if __name__ == "__main__":
    main()
