"""Configuration: TOML, TGW_<SECTION>__<KEY> overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_gateway_toml_is_every_default():
    assert load_config(ROOT / "config" / "gateway.toml", environ={}) == Config()


def test_shipped_gateway_toml_names_every_key():
    text = (ROOT / "config" / "gateway.toml").read_text()
    for section, model in Config().model_dump(exclude={"providers", "plugins"}).items():
        assert f"[{section}]" in text
        for key in model:
            assert f"\n{key} = " in text, f"{section}.{key} is missing from config/gateway.toml"


def test_toml_then_environment_overrides(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[server]\nport = 9000\napi_keys = ["a"]\n[engine]\nconcurrency = 2\n')
    cfg = load_config(path, environ={
        "TGW_SERVER__PORT": "9100",
        "TGW_WEBHOOKS__URLS": '["http://example.com/hook"]',
        "TGW_WEBHOOKS__SECRET": "whsec_c2VjcmV0",
        "TGW_PROVIDERS__MEMORIES__API_KEY": "sk-1",
        "TGW_PROVIDERS__LOCAL": '{"secret": "whsec_c2VjcmV0"}',
        "TGW_SERVER__PUBLIC_URL": "12345",
        "UNRELATED": "x",
    })
    assert cfg.server.port == 9100 and cfg.server.api_keys == ["a"] and cfg.engine.concurrency == 2
    assert cfg.webhooks.urls == ["http://example.com/hook"]
    assert cfg.providers == {"memories": {"api_key": "sk-1"}, "local": {"secret": "whsec_c2VjcmV0"}}
    assert cfg.server.public_url == "12345"


@pytest.mark.parametrize("toml, environ, message", [
    ("[server]\nbogus = 1\n", {}, "server.bogus: unknown key"),
    ("[nonsense]\na = 1\n", {}, "nonsense: unknown key"),
    ('[server]\nport = "eighty"\n', {}, "server.port: Input should be a valid integer"),
    ("[server]\nport = 70000\n", {}, "server.port: Input should be less than or equal to 65535"),
    ("", {"TGW_ENGINE__CONCURRENCY": "0"}, "engine.concurrency: Input should be greater than or equal to 1"),
    ("", {"TGW_WEBHOOKS__SECRET": "plain"}, "webhooks.secret: Value error, must start with 'whsec_'"),
    ("", {"TGW_WEBHOOKS__URLS": '["ftp://x"]'}, "webhooks.urls: Value error, must use http or https"),
    ("", {"TGW_DATABASE__URL": "mysql://x"}, "database.url: Value error, must be a sqlite:/// or postgresql"),
    ("[server\n", {}, "invalid TOML"),
])
def test_bad_configuration_names_the_key(tmp_path, toml, environ, message):
    path = tmp_path / "g.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=environ)
    assert message in str(err.value)


def test_serve_refuses_to_start_on_a_bad_key(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("[jobs]\nlease = 5\n")
    proc = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["Error: invalid configuration: jobs.lease: unknown key"]


def test_model_path_must_be_a_model_folder(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"TGW_ENGINE__MODEL_PATH": str(tmp_path)})
    assert "engine.model_path: Value error" in str(err.value) and "no model.bin" in str(err.value)
    from gateway.local_models import bundled_model_path

    assert load_config(None, environ={"TGW_ENGINE__MODEL_PATH": bundled_model_path()}).engine.model_path
