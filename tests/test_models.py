"""Several local models by alias (issue 14, items 3 and 4): [engine.models] entries given as a
folder or as a faster-whisper name found in engine.download_dir (a Hugging Face cache, laid out
here as huggingface_hub lays it out, holding the bundled tiny.en), loaded on first use, unloaded
after engine.model_idle_s, listed by `transcribe-gateway models`; `models pull` refuses offline.
Nothing here downloads: the suite runs offline (HF_HUB_OFFLINE, no network), and lookups read files only."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from gateway import requests
from gateway.appkeys import PROVIDERS
from gateway.config import ConfigError, load_config
from gateway.errors import BadRequest
from gateway.local_models import LocalModels, ModelUnavailable, bundled_model_path
from gateway.options import TaskOptions
from test_cli import cli

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path) -> Path:
    """A Hugging Face cache holding faster-whisper's `tiny.en` (Systran/faster-whisper-tiny.en): the
    bundled model's files as blobs, linked from the snapshot that refs/main names."""
    cache = tmp_path / "hub"
    repo = cache / "models--Systran--faster-whisper-tiny.en"
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for f in Path(bundled_model_path()).iterdir():
        (repo / "blobs" / f"blob-{f.name}").symlink_to(f)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", f"blob-{f.name}"))
    return cache


@pytest.fixture
def no_connections(monkeypatch):
    """Any attempt to look up or connect to a host fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def engine_config(**engine):
    return load_config(None, environ={}, overrides={"engine": engine}).engine


def test_a_name_is_found_in_the_cache_and_one_missing_says_how_to_get_it(hf_cache, no_connections):
    cfg = engine_config(models={"tiny": "tiny.en", "small": "small"}, download_dir=str(hf_cache))
    models = LocalModels(cfg, background=False)
    assert models.path("tiny") == str(hf_cache / "models--Systran--faster-whisper-tiny.en" / "snapshots" / REVISION)
    with pytest.raises(ModelUnavailable) as err:
        models.check()
    assert str(err.value).startswith(
        f"engine.models.small: model 'small' is not in engine.download_dir ({hf_cache}) and could not be downloaded "
        "(")
    assert "outgoing traffic has been disabled" in str(err.value)  # HF_HUB_OFFLINE (conftest): no look-up
    assert str(err.value).endswith("); run `transcribe-gateway models pull small` on a machine with internet "
                                   "access (with the same engine.download_dir), or copy that folder here")
    assert models.path("tiny") and not (hf_cache / "models--Systran--faster-whisper-small" / "snapshots").exists()
    with pytest.raises(ModelUnavailable, match=r"^model 'gone' is not configured"):  # a task queued before a restart
        with models.use("gone"):
            pass


@pytest.mark.parametrize("entry, message", [
    ("./nowhere", "engine.models.x.source: Value error, './nowhere' is not a CTranslate2 Whisper model folder"),
    ("large-v9", "engine.models.x.source: Value error, 'large-v9' is neither a model folder (a path) nor a "
                 "faster-whisper model name"),
    ({"source": "tiny", "device": "tpu"}, "engine.models.x.device: Input should be 'cpu', 'cuda' or 'auto'"),
])
def test_a_bad_entry_stops_start_up_naming_its_key(entry, message):
    with pytest.raises(ConfigError) as err:
        engine_config(models={"x": entry})
    assert message in str(err.value)


def test_an_entry_may_not_take_the_default_alias():
    with pytest.raises(ConfigError, match="engine.models: Value error, 'whisper-1' is engine.model_alias already"):
        engine_config(models={"whisper-1": "tiny"})


def test_a_model_unloads_after_its_idle_time_but_never_while_in_use(hf_cache):
    now = [0.0]
    cfg = engine_config(models={"tiny": {"source": "tiny.en", "device": "auto"}}, download_dir=str(hf_cache),
                        model_idle_s=60)
    models = LocalModels(cfg, clock=lambda: now[0], background=False)
    models.load()  # the default
    assert not models.loaded("tiny") and models.multilingual("tiny") is None
    with models.use("tiny") as model:
        now[0] = 1000.0
        assert models.sweep() == [] and models.loaded("tiny")  # in use: kept, however long
    assert model.model.device == "cpu"  # "auto" passed on to CTranslate2, which found no GPU here
    now[0] = 1059.0
    assert models.sweep() == [] and models.loaded("tiny")
    now[0] = 1060.0
    assert models.sweep() == ["tiny"]
    assert not models.loaded("tiny") and models.loaded() and models.multilingual("tiny") is False
    with models.use("tiny") as again:  # loads again on its next use
        assert again is not model


@pytest.fixture
def broken_model(tmp_path) -> Path:
    """A folder with a model.bin that is no model: it passes the configuration's check, and fails to load."""
    folder = tmp_path / "broken"
    folder.mkdir()
    for f in Path(bundled_model_path()).iterdir():
        if f.name != "model.bin":
            shutil.copy(f, folder / f.name)
    (folder / "model.bin").write_bytes(b"not a model")
    return folder


async def test_tasks_run_on_the_model_they_name_which_loads_on_first_use(start_gateway, hf_cache, multilingual_model,
                                                                         broken_model, speech_wav):
    gw = await start_gateway(engine={"speaker_labels": False, "download_dir": str(hf_cache), "models": {
        "base": str(multilingual_model), "tiny": "tiny.en", "broken": str(broken_model)}})
    ready = await gw.get("/readyz")
    assert ready["models"] == {"whisper-1": "loaded", "base": "not loaded", "tiny": "not loaded",
                               "broken": "not loaded"}
    async with gw.http.get(gw.url + "/v1/models") as resp:
        listed = await resp.json()
    assert sorted(m["id"] for m in listed["data"] if m["owned_by"] == "local") == ["base", "broken", "tiny",
                                                                                   "whisper-1"]
    asset = await gw.upload(speech_wav)
    status, body = await gw.call("POST", "/transcriptions/async-generate-audio",
                                 json={"asset_id": asset, "model": "tiny", "language": "de"})
    assert status == 400 and "the model behind 'tiny' is English-only" in body["msg"], body  # its own flag
    providers = gw.app[PROVIDERS]
    with pytest.raises(BadRequest, match=r"cannot translate \(engine.models.tiny\); give that alias a multilingual"):
        await requests.check_options(providers, providers.get("local"), "tiny", TaskOptions(translate=True))
    await requests.check_options(providers, providers.get("local"), "base", TaskOptions(translate=True))
    done = await gw.wait(await gw.submit(asset_id=asset, model="base", language="de"), timeout=120)
    assert done["status"] == "completed", done
    assert done["result"]["usage_metadata"]["model"] == "base"
    assert (await gw.get("/readyz"))["models"]["base"] == "loaded"
    failed = await gw.wait(await gw.submit(asset_id=asset, model="broken"), timeout=60)
    assert failed["status"] == "failed" and failed["attempts"] == 1, failed  # permanent: no retry
    assert failed["error"].startswith(f"model 'broken' ({broken_model}) cannot be loaded: RuntimeError: "), failed


async def test_start_up_stops_in_one_line_for_a_name_not_downloaded(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/g.db"\n[server]\nport = 0\n'
                      f'[engine]\ndownload_dir = "{tmp_path}/hub"\n[engine.models]\nbig = "large-v3"\n')
    code, out, err = await cli("serve", "--config", str(config))
    assert code == 1 and err.strip().count("\n") == 0, err
    assert err.startswith("Error: engine.models.big: model 'large-v3' is not in engine.download_dir") and (
        "could not be downloaded (" in err and "run `transcribe-gateway models pull large-v3`" in err), err


async def test_models_lists_them_and_pull_finds_one_there_or_refuses_offline(start_gateway, hf_cache, tmp_path):
    gw = await start_gateway(engine={"speaker_labels": False, "download_dir": str(hf_cache),
                                     "models": {"tiny": "tiny.en"}})  # the CLI is told of one more, not downloaded
    config = tmp_path / "gateway.toml"
    config.write_text(f'[engine]\ndownload_dir = "{hf_cache}"\n[engine.models]\ntiny = "tiny.en"\nsmall = "small"\n')
    code, out, err = await cli("models", "--config", str(config), "--url", gw.url, "--json")
    assert code == 0, err
    rows = {row["alias"]: row for row in json.loads(out)}
    snapshot = str(hf_cache / "models--Systran--faster-whisper-tiny.en" / "snapshots" / REVISION)
    size = round(os.path.getsize(Path(bundled_model_path()) / "model.bin") / 2**20)
    assert (rows["whisper-1"]["source"], rows["whisper-1"]["loaded"], rows["whisper-1"]["memory_mb"]) == (
        "bundled", True, size)
    assert (rows["tiny"]["path"], rows["tiny"]["loaded"], rows["tiny"]["memory_mb"]) == (snapshot, False, size)
    assert rows["small"]["path"] is None and "models pull small" in rows["small"]["error"]

    code, out, err = await cli("models", "pull", "--config", str(config), "tiny")  # an alias: its name
    assert code == 0 and out.strip() == f"already there: {snapshot}", (out, err)
    code, out, err = await cli("models", "pull", "--config", str(config), "small", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert code == 1 and out == "" and err.splitlines()[-1].startswith(
        "Error: cannot download 'small' (Systran/faster-whisper-small) from Hugging Face: "), err
    assert not (hf_cache / "models--Systran--faster-whisper-small" / "snapshots").exists()
