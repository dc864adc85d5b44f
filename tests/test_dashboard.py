"""The dashboard in a real browser (Playwright driving Debian's chromium, tests/conftest.py):
sign-in, upload to a live transcript, speakers' colours, click-to-seek and the highlighted
segment, downloads, search to a task at its time, redeliver, the live task list, escaping, the
status page, naming a speaker, labels and a 360 px screen. On every page: no console error, no failed request
beyond those a test expects, and no request to any other origin (they are aborted and reported).

One gateway for the module (served from a thread: Playwright's sync API owns this one), keyed,
with the echo provider taking a second a task, and a webhook receiver counting its deliveries.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time

import pytest
from playwright.sync_api import Page, expect

from conftest import ECHO, espeak, free_port, test_config
from gateway.client import ClientError
from threaded import ThreadedGateway
from tgw_echo import script_wav

KEY = "dashboard-test-key-7f3a9c"
SCRIPT = "SPEAKER_00: Welcome to the quarterly review.\nSPEAKER_01: Thanks, glad to be here.\n" \
         "SPEAKER_00: Let us start with the numbers."
WAIT_MS = 20_000  # the longest any page waits for a task (each takes about 1 s)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    cfg = test_config(tmp, f"sqlite:///{tmp / 'gateway.db'}", server={"api_keys": [KEY]},
                      providers={"echo": {"delay_s": 1.0}},
                      webhooks={"urls": [f"http://127.0.0.1:{port}/hook"]})
    gateway = ThreadedGateway(cfg)
    gateway.hook_url = gateway.receiver(port)
    gateway.start()
    gateway.tmp = tmp
    yield gateway
    gateway.stop()


class Watched:
    """A page whose console errors, failed responses and requests to other origins are recorded."""

    def __init__(self, page: Page, origin: str):
        self.page, self.origin, self.problems, self.allowed = page, origin, [], set()
        page.context.route("**/*", self._route)
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("response", self._response)

    def _route(self, route):
        url = route.request.url
        if url == self.origin or url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.problems.append(f"request to another origin: {url}")
            route.abort()

    def _response(self, response):
        if response.status >= 400 and response.status not in self.allowed:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def allow(self, status: int) -> None:
        """A test's expected error answer (a main-frame 4xx also shows as a console error)."""
        self.allowed.add(status)


@pytest.fixture
def browser_page(page: Page, gw):
    watched = Watched(page, gw.url)
    yield watched
    expected = {f"status of {s}" for s in watched.allowed}
    problems = [p for p in watched.problems if not any(e in p for e in expected)]
    assert problems == []


def sign_in(page: Page, gw, key: str = KEY) -> None:
    page.goto(gw.url + "/")
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")


@pytest.fixture
def signed_in(browser_page, gw):
    sign_in(browser_page.page, gw)
    expect(browser_page.page.locator("h1")).to_have_text("Transcribe a file")
    browser_page.page.wait_for_load_state()  # its script too
    return browser_page


def finished_task(gw, script: str = SCRIPT, speaker: bool = True, seconds: float = 8) -> str:
    """A completed echo task made through the API (not the page), its audio `seconds` long: its task_id."""
    path = script_wav(gw.tmp / f"task-{time.monotonic_ns()}.wav", script, seconds=seconds)

    async def make(client):
        task_id = await client.submit(asset_id=await client.upload(path), model=ECHO, speaker=speaker)
        for _ in range(WAIT_MS // 50):
            try:
                if (await client.status(task_id))["status"] in ("completed", "failed"):
                    return task_id
            except ClientError as exc:  # "503 database unavailable; try again later": SQLite busy on a loaded machine
                if " 503 " not in str(exc):
                    raise
            await asyncio.sleep(0.05)
        raise AssertionError(f"task {task_id} did not finish")

    return gw.run(gw.api(make))


def test_sign_in_wrong_key_then_right(browser_page, gw):
    page = browser_page.page
    browser_page.allow(401)
    page.goto(gw.url + "/tasks")
    expect(page).to_have_url(re.compile(r"/\?next=(%2F|/)tasks$"))
    page.fill("input[name=api_key]", "not-the-key")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_have_text("That API key is not valid.")
    page.fill("input[name=api_key]", KEY)
    page.click("button[type=submit]")
    expect(page).to_have_url(gw.url + "/tasks")
    expect(page.locator("h1")).to_have_text("Tasks")
    cookie, = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
    assert KEY not in cookie["value"] and KEY not in page.content() and KEY not in page.url
    page.click("text=Sign out")
    expect(page.locator("input[name=api_key]")).to_be_visible()
    page.goto(gw.url + "/tasks")
    expect(page.locator("input[name=api_key]")).to_be_visible()  # signed out: the form again


def test_upload_live_transcript_speakers_and_seek(signed_in, gw):
    page = signed_in.page
    page.set_input_files("input[type=file][name=file]", script_wav(gw.tmp / "upload.wav", SCRIPT, seconds=8))
    expect(page.locator("#file-name")).to_have_text("upload.wav")
    page.check("input[name=speaker]")
    page.select_option("select[name=model]", ECHO)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/tasks/[0-9a-f]{32}$"))
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#task-status")).not_to_have_text("completed")  # it takes a second: live first
    segments = page.locator("#segments li.seg")
    expect(segments).to_have_count(3, timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded") is True  # the transcript came without a reload
    expect(page.locator("#task-status")).to_have_text("completed")

    # each speaker its own colour
    expect(segments.nth(0)).to_have_class(re.compile(r"\bspk-0\b"))
    expect(segments.nth(1)).to_have_class(re.compile(r"\bspk-1\b"))
    expect(segments.nth(2)).to_have_class(re.compile(r"\bspk-0\b"))
    colour = "el => getComputedStyle(el).borderLeftColor"
    assert segments.nth(0).evaluate(colour) == segments.nth(2).evaluate(colour) != segments.nth(1).evaluate(colour)
    expect(segments.nth(1).locator(".who")).to_have_text("SPEAKER_01")

    # click-to-seek, and the segment being played is highlighted; the player does not play
    # meanwhile (its play() does nothing), so only a seek can move its time
    page.evaluate("() => { const p = document.getElementById('player'); p.realPlay = p.play; "
                  "p.play = () => Promise.resolve(); }")
    segments.nth(1).locator(".text").click()
    page.wait_for_function("() => Math.abs(document.getElementById('player').currentTime - 2.0) < 0.3")
    expect(segments.nth(1)).to_have_class(re.compile(r"\bplaying\b"))
    expect(segments.nth(0)).not_to_have_class(re.compile(r"\bplaying\b"))
    segments.nth(2).locator("button.at").press("Enter")  # by keyboard too
    page.wait_for_function("() => Math.abs(document.getElementById('player').currentTime - 4.0) < 0.3")
    expect(segments.nth(2)).to_have_class(re.compile(r"\bplaying\b"))
    # as the audio plays, the highlight follows it
    page.evaluate("() => { const p = document.getElementById('player'); p.currentTime = 1.5; p.realPlay(); }")
    expect(segments.nth(0)).to_have_class(re.compile(r"\bplaying\b"))
    expect(segments.nth(1)).to_have_class(re.compile(r"\bplaying\b"), timeout=WAIT_MS)


def test_downloads(signed_in, gw):
    task_id = finished_task(gw)
    page = signed_in.page
    page.goto(f"{gw.url}/tasks/{task_id}")
    got = {}
    for fmt in ("srt", "vtt", "txt", "json"):
        with page.expect_download() as download:
            page.click(f"a[href$='transcript.{fmt}']")
        assert download.value.suggested_filename == f"{task_id}.{fmt}"
        got[fmt] = open(download.value.path(), encoding="utf-8").read()
    assert "00:00:02,000 --> 00:00:04,000" in got["srt"]
    assert got["vtt"].startswith("WEBVTT")
    assert "Thanks, glad to be here." in got["txt"]
    assert json.loads(got["json"])["data"][1]["speaker"] == "SPEAKER_01"


def test_search_to_task_at_its_time(signed_in, gw):
    task_id = finished_task(gw, "SPEAKER_00: Nothing here.\nSPEAKER_01: The zeppelin landed at noon.")

    async def indexed(client):
        for _ in range(200):
            if (await client.get("/search", q="zeppelin"))["items"]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("never indexed")

    gw.run(gw.api(indexed))
    page = signed_in.page
    page.goto(gw.url + "/search")
    page.fill("input[name=q]", "zeppelin")
    page.press("input[name=q]", "Enter")
    hit = page.locator(".hits li a")
    expect(hit).to_have_count(1)
    expect(hit.locator("mark")).to_have_text("zeppelin")
    hit.click()
    expect(page).to_have_url(f"{gw.url}/tasks/{task_id}?t=2.0")
    page.wait_for_function("() => Math.abs(document.getElementById('player').currentTime - 2.0) < 0.3")
    expect(page.locator("#seg-1")).to_have_class(re.compile(r"\bplaying\b"))


def test_redeliver(signed_in, gw):
    task_id = finished_task(gw)

    def hooks() -> int:
        return sum(1 for h in gw.hooks if h["task_id"] == task_id)

    page = signed_in.page
    page.goto(f"{gw.url}/tasks/{task_id}")
    row = page.locator("#deliveries tr", has=page.locator(f"code:text-is('{gw.hook_url}')"))
    expect(row.locator(".badge")).to_have_text("delivered", timeout=WAIT_MS)
    assert hooks() == 1
    row.get_by_role("button", name=f"redeliver to {gw.hook_url}").click()
    expect(page).to_have_url(f"{gw.url}/tasks/{task_id}#deliveries")
    deadline = time.monotonic() + WAIT_MS / 1000
    while hooks() < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert hooks() == 2  # delivered again
    expect(row.locator(".badge")).to_have_text("delivered", timeout=WAIT_MS)


def test_a_speaker_label_is_named_in_place(signed_in, gw):
    task_id = finished_task(gw)
    page = signed_in.page
    page.goto(f"{gw.url}/tasks/{task_id}")
    expect(page.locator("#seg-1 .who")).to_have_text("SPEAKER_01")
    page.locator(".legend summary", has_text="SPEAKER_01").click()  # the label opens its form
    page.get_by_label("new name for SPEAKER_01").fill("Dr. <b id=bold>Lee</b>")
    page.get_by_role("button", name="rename SPEAKER_01").click()
    expect(page).to_have_url(f"{gw.url}/tasks/{task_id}")
    expect(page.locator("#seg-1 .who")).to_have_text("Dr. <b id=bold>Lee</b>")  # as text: escaped
    expect(page.locator("#seg-0 .who")).to_have_text("SPEAKER_00")
    expect(page.locator(".legend summary")).to_have_text(["SPEAKER_00", "Dr. <b id=bold>Lee</b>"])
    expect(page.locator("#bold")).to_have_count(0)

    async def stored(client):
        return [s["speaker"] for s in (await client.status(task_id))["result"]["data"]]

    assert gw.run(gw.api(stored)) == ["SPEAKER_00", "Dr. <b id=bold>Lee</b>", "SPEAKER_00"]  # the same rename


TURNS_SCRIPT = "SPEAKER_00: Welcome to the quarterly review.\nSPEAKER_01: [mm-hm]\n" \
               "SPEAKER_00: Let us start with the numbers."  # SPEAKER_01 is heard, not transcribed


def test_speaker_turns_timeline_and_a_voice_heard_only_in_the_turns_is_named(signed_in, gw):
    page = signed_in.page
    page.set_input_files("input[type=file][name=file]", script_wav(gw.tmp / "turns.wav", TURNS_SCRIPT, seconds=6))
    page.check("input[name=speaker_turns]")  # labels the speakers too: "Label speakers" is left unticked
    page.select_option("select[name=model]", ECHO)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/tasks/[0-9a-f]{32}$"))
    task_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#segments li.seg")).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator("#segments .who")).to_have_text(["SPEAKER_00", "SPEAKER_00"])
    # the voice no segment holds is in the legend, with each voice's speaking time from the turns
    expect(page.locator(".legend summary")).to_have_text(["SPEAKER_00", "SPEAKER_01"])
    expect(page.locator(".legend .talk")).to_have_text(["0:04", "0:02"])
    bars = page.locator("#timeline rect")
    expect(bars).to_have_count(3)
    assert [bars.nth(i).get_attribute("class") for i in range(3)] == ["spk-0", "spk-1", "spk-0"]
    assert [float(bars.nth(i).get_attribute("x")) for i in range(3)] == pytest.approx([0, 333.33, 666.67])
    expect(bars.nth(1).locator("title")).to_have_text("SPEAKER_01, 0:02 to 0:04")
    fill = "el => getComputedStyle(el).fill"
    assert bars.nth(1).evaluate(fill) == page.locator(".legend li").nth(1).evaluate(
        "el => getComputedStyle(el).color") != bars.nth(0).evaluate(fill)

    page.evaluate("() => { document.getElementById('player').play = () => Promise.resolve(); }")
    bars.nth(1).click()  # plays from the turn's start, where no segment starts
    page.wait_for_function("() => Math.abs(document.getElementById('player').currentTime - 2.0) < 0.3")

    page.locator(".legend summary", has_text="SPEAKER_01").click()
    page.get_by_label("new name for SPEAKER_01").fill("Ann <i>")
    page.get_by_role("button", name="rename SPEAKER_01").click()
    expect(page).to_have_url(f"{gw.url}/tasks/{task_id}")
    expect(page.locator(".legend summary")).to_have_text(["SPEAKER_00", "Ann <i>"])
    expect(page.locator("#timeline rect").nth(1).locator("title")).to_have_text("Ann <i>, 0:02 to 0:04")

    async def stored(client):
        return [t["speaker"] for t in (await client.status(task_id))["result"]["turns"]]

    assert gw.run(gw.api(stored)) == ["SPEAKER_00", "Ann <i>", "SPEAKER_00"]


def test_no_timeline_without_speaker_turns(signed_in, gw):
    task_id = finished_task(gw)
    page = signed_in.page
    page.goto(f"{gw.url}/tasks/{task_id}")
    expect(page.locator(".legend summary")).to_have_text(["SPEAKER_00", "SPEAKER_01"])
    expect(page.locator(".legend .talk")).to_have_text(["0:04", "0:02"])  # by the segments
    expect(page.locator("#timeline")).to_have_count(0)


def test_the_upload_form_names_the_speakers_the_key_enrolled(signed_in, gw):
    import aiohttp

    voice = espeak("Parking remains a problem, because the old market square is already full of cars.",
                   gw.tmp / "ann.wav")

    async def enrol(client):
        form = aiohttp.FormData()
        form.add_field("name", "Ann")
        form.add_field("file", voice.read_bytes(), filename="ann.wav", content_type="audio/wav")
        return (await client._call("POST", "/speakers", data=form))["speaker_id"]

    speaker_id = gw.run(gw.api(enrol))
    page = signed_in.page
    page.set_input_files("input[type=file][name=file]", script_wav(gw.tmp / "known.wav", SCRIPT, seconds=6))
    page.check("input[name=known_speakers]")
    page.select_option("select[name=model]", ECHO)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/tasks/[0-9a-f]{32}$"))
    task_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#segments .who")).to_have_text(["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"],
                                                        timeout=WAIT_MS)  # labelled too
    with sqlite3.connect(gw.tmp / "gateway.db") as db:
        [(options,)] = db.execute("SELECT options FROM task WHERE id = ?", (task_id,)).fetchall()
    assert [k["name"] for k in json.loads(options)["known_speakers"]] == ["Ann"]  # the voiceprint went with it
    gw.run(gw.api(lambda client: client._call("DELETE", f"/speakers/{speaker_id}")))


def test_live_task_list(signed_in, gw):
    page = signed_in.page
    page.goto(gw.url + "/tasks")
    page.evaluate("window.notReloaded = true")
    task_id = finished_task(gw)
    row = page.locator(f"tr[data-task='{task_id}']")
    expect(row.locator(".badge")).to_have_text("completed", timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded") is True
    page.select_option("select[name=status]", "failed")
    page.click("text=Filter")
    expect(page).to_have_url(gw.url + "/tasks?status=failed")
    expect(page.locator(f"tr[data-task='{task_id}']")).to_have_count(0)


def test_transcript_is_shown_as_text(signed_in, gw):
    task_id = finished_task(gw, "<script>window.pwned = 1</script><b id=bold>bold</b>", speaker=False)
    page = signed_in.page
    page.goto(f"{gw.url}/tasks/{task_id}")
    expect(page.locator("#seg-0 .text")).to_have_text("<script>window.pwned = 1</script><b id=bold>bold</b>")
    assert page.evaluate("window.pwned") is None
    expect(page.locator("#bold")).to_have_count(0)


def test_a_dropped_file_of_the_wrong_type_shows_the_gateways_message(signed_in, gw):
    signed_in.allow(400)
    page = signed_in.page
    page.evaluate("""() => {  // dropped on the form, as a file dragged from the desktop is
        const files = new DataTransfer();
        files.items.add(new File(["not audio at all"], "notes.txt", {type: "text/plain"}));
        document.querySelector(".drop").dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
    }""")
    expect(page.locator("#file-name")).to_have_text("notes.txt")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("file: is not audio")
    expect(page.locator("input[type=file][name=file]")).to_be_visible()  # the form again, to try another


def test_status_page(signed_in, gw):
    page = signed_in.page
    page.goto(gw.url + "/status")
    expect(page.locator("#status-database")).to_have_text("ok")
    expect(page.locator("tr", has_text="dashboard")).to_contain_text("transcribe-gateway")
    expect(page.get_by_text(f"echo: {ECHO}")).to_be_visible()
    expect(page.locator("#status-models")).to_contain_text("whisper-1 (bundled): ")  # loaded, or not yet


PAGES = ("/", "/tasks", "/search?q=numbers", "/status")


def test_every_control_is_labelled_fits_360px_and_prints(signed_in, gw):
    task_id = finished_task(gw)
    page = signed_in.page
    page.set_viewport_size({"width": 360, "height": 740})
    unlabelled = """() => [...document.querySelectorAll('input:not([type=hidden]), select, button, audio')]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
        .map(el => el.outerHTML)"""
    for path in (*PAGES, f"/tasks/{task_id}"):
        page.goto(gw.url + path)
        assert page.evaluate(unlabelled) == [], path
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, path
    page.emulate_media(media="print")  # printed: the transcript, without navigation, player or deliveries
    expect(page.locator("#segments li.seg")).to_have_count(3)
    for hidden in ("header.top", "#deliveries", "#player"):
        expect(page.locator(hidden)).to_be_hidden()


def test_a_long_transcript_renders_whole_and_follows_the_player(signed_in, gw):
    """1,500 segments (a two-hour file's worth; the audio here is one minute): all rendered,
    seeking and highlighting work anywhere in it (a binary search, not a scan per tick)."""
    script = "\n".join(f"SPEAKER_0{i % 3}: segment {i} of a long meeting" for i in range(1500))
    task_id = finished_task(gw, script, seconds=60)
    page = signed_in.page
    page.goto(f"{gw.url}/tasks/{task_id}")
    expect(page.locator("#segments li.seg")).to_have_count(1500)
    expect(page.locator("#seg-1499 .text")).to_have_text("segment 1499 of a long meeting")
    page.locator("#seg-20 .text").click()
    expect(page.locator("#seg-20")).to_have_class(re.compile(r"\bplaying\b"))
    page.evaluate("() => { document.getElementById('player').currentTime = 45.5; }")
    expect(page.locator("#seg-22")).to_have_class(re.compile(r"\bplaying\b"))
    expect(page.locator("li.seg.playing")).to_have_count(1)


def queued_task(gw) -> str:
    """A task no process here runs (its provider works elsewhere): queued until it is cancelled."""
    from gateway.appkeys import DB
    from gateway.models import Task, time_ordered_id

    async def make() -> str:
        task = Task(id=time_ordered_id(), model="elsewhere", provider="elsewhere", url="http://127.0.0.1/a.wav")
        app = next(r.app for r in gw.runners if DB in r.app)  # not the webhook receiver's
        async with app[DB].session() as s:
            s.add(task)
        return task.id

    return gw.run(make())


def api_status(gw, task_id: str) -> int:
    async def status(client):
        try:
            await client.status(task_id)
            return 200
        except ClientError as exc:  # "GET /transcriptions/<id>: 404 task … not found"
            return int(str(exc).split(": ", 1)[1].split()[0])

    return gw.run(gw.api(status))


def test_delete_asks_first(signed_in, gw):
    task_id = finished_task(gw)
    page = signed_in.page
    page.goto(f"{gw.url}/tasks/{task_id}")
    asked = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.click("#delete-task")
    expect(page.locator("#task-status")).to_have_text("completed")
    assert asked and asked[0].startswith("Delete this task")
    assert api_status(gw, task_id) == 200  # not deleted: the person said no
    page.once("dialog", lambda d: d.accept())
    page.click("#delete-task")
    expect(page).to_have_url(gw.url + "/tasks")
    expect(page.locator(f"tr[data-task='{task_id}']")).to_have_count(0)
    assert api_status(gw, task_id) == 404


def test_cancel_asks_first(signed_in, gw):
    task_id = queued_task(gw)
    page = signed_in.page
    page.goto(f"{gw.url}/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_text("queued")
    page.once("dialog", lambda d: d.dismiss())
    page.click("#cancel-task")
    expect(page.locator("#task-status")).to_have_text("queued")
    page.once("dialog", lambda d: d.accept())
    page.click("#cancel-task")
    expect(page).to_have_url(f"{gw.url}/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_text("cancelled")
    expect(page.locator("#cancel-task")).to_have_count(0)
    expect(page.locator("#delete-task")).to_be_visible()
