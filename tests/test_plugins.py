"""The plugin system: one delivery per plugin, retried and isolated, re-runnable; config
validated at start-up; plugins listed; a third-party plugin package installed for real."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from conftest import ECHO, count_rows, free_port, install_plugin, plugin_site_in_use, test_config
from gateway.config import load_config
from gateway.hookspecs import hookimpl
from gateway.plugins import PluginError, Plugins, RetryAfter
from test_cli import cli


class Recorder:
    """Remembers every call (a plain sync implementation: it runs in a thread)."""

    def __init__(self):
        self.completed, self.failed = [], []

    @hookimpl
    def transcript_completed(self, task, transcript):
        self.completed.append((time.monotonic(), task, transcript))

    @hookimpl
    def transcript_failed(self, task, error):
        self.failed.append((task, error))


class Failing:
    def __init__(self):
        self.calls = 0
        self.fixed = False

    @hookimpl
    async def transcript_completed(self, task):
        self.calls += 1
        if not self.fixed:
            raise RuntimeError("boom")


class Hanging:
    @hookimpl
    async def transcript_completed(self, task):
        await asyncio.sleep(30)


class Slow:
    """Takes longer than a webhook may (its own timeout_s allows it)."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0

    @hookimpl
    async def transcript_completed(self, task):
        self.calls += 1
        await asyncio.sleep(self.seconds)


class RateLimited:
    def __init__(self):
        self.times = []

    @hookimpl
    async def transcript_completed(self, task):
        self.times.append(time.monotonic())
        if len(self.times) == 1:
            raise RetryAfter(0.6, "slow down")


async def start_with(start_gateway, tmp_path, database_url, extra: dict, **sections):
    cfg = test_config(tmp_path, database_url, **sections)
    plugins = Plugins(cfg.plugins.load, cfg.plugins.sections())
    for name, (plugin, section) in extra.items():
        plugins.register(plugin, name, section)
    return await start_gateway(config=cfg, plugin_manager=plugins)


async def wait_deliveries(gw, task_id, done, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        deliveries = {d["target"]: d for d in (await gw.status(task_id))["deliveries"]}
        if done(deliveries):
            return deliveries
        assert time.monotonic() < deadline, deliveries
        await asyncio.sleep(0.05)


def settled(deliveries) -> bool:
    return all(d["status"] in ("delivered", "dead") for d in deliveries.values())


async def test_one_failing_plugin_never_blocks_another(start_gateway, tmp_path, database_url, speech_script, webhook):
    recorder, failing, hanging = Recorder(), Failing(), Hanging()
    gw = await start_with(start_gateway, tmp_path, database_url, {
        "recorder": (recorder, {}), "failing": (failing, {"max_attempts": 3}),
        "hanging": (hanging, {"timeout_s": 0.5, "max_attempts": 1})},
        webhooks={"urls": [webhook.url]})
    task_id = await gw.submit(asset_id=await gw.upload(speech_script), model=ECHO)
    await gw.wait(task_id)
    finished = time.monotonic()
    deliveries = await wait_deliveries(gw, task_id, settled)

    assert deliveries["plugin:recorder"]["status"] == "delivered"
    assert recorder.completed[0][0] - finished < 1.0  # not held up by the failing or hanging plugin
    assert deliveries[webhook.url]["status"] == "delivered"
    assert deliveries["plugin:failing"] | {} == {
        "target": "plugin:failing", "kind": "plugin", "status": "dead", "attempts": 3,
        "last_status_code": None, "last_error": "RuntimeError: boom"}
    assert failing.calls == 3
    assert deliveries["plugin:hanging"]["last_error"] == "timed out after 0.5s"
    assert deliveries["plugin:hanging"]["status"] == "dead"

    _, task, transcript = recorder.completed[0]
    assert task.task_id == task_id and task.filename == speech_script.name and task.status == "completed"
    assert transcript.text == "Hello, how are you today? We are testing the transcription gateway."
    assert transcript.duration == 4.0
    assert len(recorder.completed) == 1

    # Re-run only the failing plugin, now fixed: the others are not called again.
    failing.fixed = True
    status, body = await gw.call("POST", f"/transcriptions/{task_id}/redeliver", params={"target": "plugin:failing"})
    assert status == 200 and body["data"] == {"task_id": task_id, "redelivering": 1}
    deliveries = await wait_deliveries(gw, task_id, lambda d: d["plugin:failing"]["status"] == "delivered")
    assert deliveries["plugin:failing"]["attempts"] == 1 and failing.calls == 4
    numbers = await count_rows(database_url, "SELECT count(DISTINCT a.number) FROM deliveryattempt a "
                               "JOIN delivery d ON d.id = a.delivery_id WHERE d.target = 'plugin:failing'")
    assert numbers == 4  # the attempt log keeps counting across a redeliver
    assert len(recorder.completed) == 1 and len(webhook.received) == 1

    # The CLI re-runs all of them.
    code, out, err = await cli("redeliver", task_id, "--url", gw.url)
    assert code == 0 and "deliveries queued again" in out, err
    await wait_deliveries(gw, task_id, lambda d: len(recorder.completed) == 2 and settled(d))
    status, body = await gw.call("POST", f"/transcriptions/{task_id}/redeliver", params={"target": "plugin:nope"})
    assert status == 404 and body["msg"] == f"task {task_id} has no delivery to 'plugin:nope'"


async def test_a_plugin_slower_than_a_webhook_is_called_once(start_gateway, tmp_path, database_url, speech_wav):
    """A delivery's lease follows its own target's timeout: a plugin allowed 30 s that takes 10 is
    not claimed again, and called a second time, when a webhook's lease (8 s here) would end."""
    slow = Slow(10.0)
    gw = await start_with(start_gateway, tmp_path, database_url, {"slow": (slow, {"timeout_s": 30})},
                          jobs={"poll_s": 0.2})
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO)
    await gw.wait(task_id)
    deliveries = await wait_deliveries(gw, task_id, lambda d: d["plugin:slow"]["status"] == "delivered", timeout=40)
    assert slow.calls == 1 and deliveries["plugin:slow"]["attempts"] == 1


async def test_retry_after_and_failure_hook(start_gateway, tmp_path, database_url, speech_wav):
    limited, recorder = RateLimited(), Recorder()
    gw = await start_with(start_gateway, tmp_path, database_url,
                          {"limited": (limited, {}), "recorder": (recorder, {})})
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO)
    deliveries = await wait_deliveries(gw, task_id, lambda d: d.get("plugin:limited", {}).get("status") == "delivered")
    assert deliveries["plugin:limited"]["attempts"] == 2
    assert limited.times[1] - limited.times[0] >= 0.55  # waited as asked, not the default backoff

    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 100)
    failed_id = await gw.submit(asset_id=await gw.upload(junk))
    deliveries = await wait_deliveries(gw, failed_id, lambda d: d.get("plugin:recorder", {}).get("status") == "delivered")
    assert "plugin:limited" not in deliveries  # it implements no transcript_failed
    [(task, error)] = recorder.failed
    assert task.task_id == failed_id and task.status == "failed" and error.startswith("the file could not be decoded")


async def test_a_worker_claims_only_the_deliveries_of_plugins_it_has_loaded(start_gateway, tmp_path, database_url,
                                                                           speech_wav, webhook):
    """Two processes share one database; the worker of the one without `recorder` sends the webhook
    and its own plugins' deliveries, and leaves recorder's alone: no attempt burnt on a plugin it
    cannot call. A worker that has it loaded delivers it."""
    from test_callback_door import HELLO, for_task

    recorder = Recorder()
    cfg = test_config(tmp_path, database_url, webhooks={"urls": [webhook.url]})

    def with_recorder() -> Plugins:
        plugins = Plugins(cfg.plugins.load, cfg.plugins.sections())
        plugins.register(recorder, "recorder", {})
        return plugins

    api = await start_gateway(config=cfg, worker=False, plugin_manager=with_recorder())
    task_id = await api.submit(asset_id=await api.upload(speech_wav))
    status, body = await api.call("POST", "/callbacks/local", json=for_task(HELLO, task_id))
    assert status == 200 and body["data"]["outcome"] == "accepted", body

    await start_gateway(config=cfg)  # a worker without recorder (srt, search, slack)
    others = lambda d: all(v["status"] == "delivered" for t, v in d.items() if t != "plugin:recorder")  # noqa: E731
    deliveries = await wait_deliveries(api, task_id, others)
    assert {"plugin:srt", "plugin:search", webhook.url} <= set(deliveries)
    await asyncio.sleep(1.0)  # five more polls (jobs.poll_s = 0.2) of its delivery loop
    deliveries = {d["target"]: d for d in (await api.status(task_id))["deliveries"]}
    assert deliveries["plugin:recorder"] == {"target": "plugin:recorder", "kind": "plugin", "status": "pending",
                                             "attempts": 0, "last_status_code": None, "last_error": None}
    assert await count_rows(database_url, "SELECT count(*) FROM deliveryattempt a JOIN delivery d "
                            "ON d.id = a.delivery_id WHERE d.target = 'plugin:recorder'") == 0
    assert recorder.completed == []

    await start_gateway(config=cfg, plugin_manager=with_recorder())
    deliveries = await wait_deliveries(api, task_id, lambda d: d["plugin:recorder"]["status"] == "delivered")
    assert deliveries["plugin:recorder"]["attempts"] == 1 and len(recorder.completed) == 1


def test_plugin_sections_are_validated():
    def plugins(**environ):
        cfg = load_config(None, environ=environ)
        return Plugins(cfg.plugins.load, cfg.plugins.sections())

    with pytest.raises(PluginError, match=r"plugins\.srt\.formats\.0: Input should be 'srt', 'vtt', 'txt' or 'json'"):
        plugins(TGW_PLUGINS__SRT__FORMATS='["doc"]')
    with pytest.raises(PluginError, match=r"plugins\.srt\.bogus: unknown key"):
        plugins(TGW_PLUGINS__SRT__BOGUS="1")
    with pytest.raises(PluginError, match=r"plugins\.nope: no plugin named 'nope' is installed"):
        plugins(TGW_PLUGINS__NOPE='{"a": 1}')
    with pytest.raises(PluginError, match=r"plugins\.load: no plugin named 'nope' is installed \(installed: .*srt"):
        plugins(TGW_PLUGINS__LOAD="srt,nope")
    assert plugins(TGW_PLUGINS__LOAD="srt").names() == ["srt"]
    assert plugins(TGW_PLUGINS__LOAD="[]").names() == []
    assert not plugins().configs["slack"].active()  # no webhook_url: no Slack deliveries


def test_a_plugin_config_error_about_the_whole_table_names_the_table():
    from pydantic import model_validator

    from gateway.plugins import PluginConfig

    class PairConfig(PluginConfig):
        a: str = ""
        b: str = ""

        @model_validator(mode="after")
        def _one(self):
            if bool(self.a) == bool(self.b):
                raise ValueError("set exactly one of a and b")
            return self

    class Pair:
        @hookimpl
        def plugin_config(self):
            return PairConfig

    with pytest.raises(PluginError) as err:
        Plugins([], {}).register(Pair(), "pair", {})
    assert str(err.value) == "plugins.pair: Value error, set exactly one of a and b"  # not "plugins.pair.: …"


async def test_plugins_command_lists_first_party_plugins(tmp_path):
    code, out, err = await cli("plugins", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert {"srt", "search", "slack"} <= set(rows)
    assert rows["slack"] == {"name": "slack", "package": "transcribe-gateway", "version": "0.1.0",
                             "hooks": ["plugin_config", "transcript_completed", "transcript_failed"]}
    bad = tmp_path / "g.toml"
    bad.write_text('[plugins.srt]\nformats = "srt"\n')
    code, _, err = await cli("serve", "--config", str(bad), "--port", str(free_port()))
    assert code == 1 and err.strip().splitlines() == ["Error: plugins.srt.formats: Input should be a valid list"]


PLUGINS_MD = Path(__file__).resolve().parent.parent / "docs" / "PLUGINS.md"


def first_plugin_files() -> tuple[str, str]:
    """The module and pyproject of docs/PLUGINS.md's "Your first plugin", as written there."""
    section = PLUGINS_MD.read_text().split("## Your first plugin", 1)[1]
    module = re.search(r"`tgw_hello.py`:\n\n```python\n(.*?)```", section, re.S).group(1)
    pyproject = re.search(r"`pyproject.toml`:\n\n```toml\n(.*?)```", section, re.S).group(1)
    return module, pyproject


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory) -> Path:
    """docs/PLUGINS.md's first plugin: a real package with its own pyproject and entry point,
    pip-installed into a folder of its own (never into the suite's environment, where every
    gateway that other tests start at the same time would load it)."""
    root, site = tmp_path_factory.mktemp("tgw-hello"), tmp_path_factory.mktemp("hello-site")
    module, pyproject = first_plugin_files()
    (root / "tgw_hello.py").write_text(module)
    (root / "pyproject.toml").write_text(pyproject)
    return install_plugin(root, site)


@pytest.fixture
def third_party_plugin(hello_site, monkeypatch):
    """The plugin installed for this test: on sys.path, and on PYTHONPATH for the processes it starts."""
    yield from plugin_site_in_use(hello_site, "tgw_hello", monkeypatch)


async def test_third_party_plugin_is_listed_and_delivered(third_party_plugin, hello_site, start_gateway, speech_script,
                                                          tmp_path):
    import tgw_hello

    assert Path(tgw_hello.__file__).is_relative_to(hello_site)  # not in the environment other tests share
    out_file = tmp_path / "hello.jsonl"
    config = tmp_path / "g.toml"
    config.write_text(f'[plugins.hello]\nout = "{out_file}"\n')
    code, out, err = await cli("plugins", "--json", "--config", str(config))
    assert code == 0, err
    [hello] = [r for r in json.loads(out) if r["name"] == "hello"]
    assert hello == {"name": "hello", "package": "tgw-hello", "version": "1.2.3",
                     "hooks": ["plugin_config", "transcript_completed"]}

    gw = await start_gateway(plugins={"hello": {"out": str(out_file)}})
    task_id = await gw.submit(asset_id=await gw.upload(speech_script), model=ECHO)
    await wait_deliveries(gw, task_id, lambda d: d.get("plugin:hello", {}).get("status") == "delivered")
    [record] = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert record["task_id"] == task_id and record["filename"] == speech_script.name
    assert "gateway" in record["text"].lower() and record["segments"] == 2 and record["out"] == str(out_file)

    with pytest.raises(PluginError, match=r"plugins\.hello\.out: Field required"):
        cfg = load_config(None, environ={})
        Plugins(cfg.plugins.load, cfg.plugins.sections())



class Wrapped:
    """A plugin with its own hook wrapper around its delivery, and a sync implementation."""

    def __init__(self):
        self.seen: list[str] = []

    @hookimpl(wrapper=True, specname="transcript_failed")
    def around_failed(self, task):
        self.seen.append("wrapper before")
        result = yield
        self.seen.append("wrapper after")
        return result

    @hookimpl
    def transcript_failed(self, task, error):
        self.seen.append(f"called: {task}, {error}")
        return "done"


async def test_hooks_go_through_pluggy_one_plugin_at_a_time_and_can_be_traced(monkeypatch):
    """call_one goes through pluggy's hook caller (a plugin's own wrappers run; another plugin's
    implementation is not called), and TGW_TRACE_PLUGINS logs every call and its result."""
    from structlog.testing import capture_logs

    monkeypatch.setenv("TGW_TRACE_PLUGINS", "1")
    plugins = Plugins([], {})
    wrapped, other = Wrapped(), Recorder()
    plugins.register(wrapped, "wrapped")
    plugins.register(other, "recorder")
    with capture_logs() as logs:
        result = await plugins.call_one("transcript_failed", "wrapped", task="t1", error="boom", config=None)
    assert result == "done"
    assert wrapped.seen == ["wrapper before", "called: t1, boom", "wrapper after"]
    assert other.failed == []  # the other plugin's implementation is not called
    calls = [e for e in logs if e["event"] in ("plugin.hook_call", "plugin.hook_result")]
    assert [(e["event"], e["hook"]) for e in calls] == [("plugin.hook_call", "transcript_failed"),
                                                        ("plugin.hook_result", "transcript_failed")]
    assert calls[0]["args"]["error"] == "'boom'" and calls[1]["result"] == "['done']"
