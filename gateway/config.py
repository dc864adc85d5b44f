"""Configuration: TOML file + `TGW_<SECTION>__<KEY>` environment overrides, validated.

Every key has a default here and is documented in `config/gateway.toml`. Unknown keys and
bad values raise `ConfigError` with a message naming the key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from gateway.retry import Backoff
from gateway.validation import describe_error

ENV_PREFIX = "TGW_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class _Section(BaseModel):
    # coerce_numbers_to_str: TGW_X__Y=123 parses as JSON 123, still fine for a string key.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


def validate_whsec(v: str) -> str:
    """A Standard Webhooks secret: "" (none) or "whsec_<base64>"."""
    if v and not v.startswith("whsec_"):
        raise ValueError("must start with 'whsec_' followed by base64")
    if v:
        import base64
        import binascii

        try:
            if not base64.b64decode(v[len("whsec_"):] + "==", validate=False):
                raise ValueError("secret is empty after 'whsec_'")
        except binascii.Error as exc:
            raise ValueError(f"not valid base64 after 'whsec_': {exc}") from None
    return v


def host_pattern(pattern: str) -> str:
    """An allow-list entry: a host name (or IP literal), or `*.domain`; normalised as URLs' hosts are."""
    from gateway.urls import UrlError, host_of, normal_host

    p = normal_host(pattern)
    wildcard = p.startswith("*.")
    name = p[2:] if wildcard else p
    try:
        ipv6 = ipaddress.ip_address(name).version == 6
    except ValueError:
        ipv6 = False
    if not name or "*" in name or any(c in name for c in "/@?# []" + ("" if ipv6 else ":")):
        raise ValueError(f"{pattern!r} is not a host name or *.domain (no scheme, port or path)")
    try:
        host = host_of(f"http://[{name}]/" if ipv6 else f"http://{name}/")
    except UrlError as exc:
        raise ValueError(f"{pattern!r} {exc}") from None
    return ("*." if wildcard else "") + host


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[str] = []
    key_secret: str = ""  # keys the HMAC of database keys' digests (gateway/keys.py)
    max_upload_mb: float = Field(500, gt=0)
    max_audio_s: float = Field(14400, gt=0)
    public_url: str = ""
    allow_private_urls: bool = False
    allow_private_hosts: list[str] = []
    url_allow_hosts: list[str] = []

    @field_validator("allow_private_hosts")
    @classmethod
    def _host_names(cls, v: list[str]) -> list[str]:
        from gateway.urls import normal_host

        return [normal_host(h) for h in v if h.strip()]

    @field_validator("url_allow_hosts")
    @classmethod
    def _host_patterns(cls, v: list[str]) -> list[str]:
        return [host_pattern(p) for p in v if p.strip()]
    max_json_kb: int = Field(1024, gt=0)
    sync_timeout_s: float = Field(600, gt=0)
    url_fetch_timeout_s: float = Field(300, gt=0)
    body_timeout_s: float = Field(600, gt=0)
    max_concurrent_uploads: int = Field(8, ge=0)  # upload bodies read at once; 0 = no limit
    max_unauthenticated_bodies: int = Field(32, gt=0)
    header_timeout_s: float = Field(30, gt=0, le=3600)
    max_connections: int = Field(512, ge=1)


class DatabaseConfig(_Section):
    url: str = "sqlite:///./data/gateway.db"
    writers: int = Field(1, ge=1, le=32)

    @field_validator("url")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if not (v.startswith("sqlite") or v.startswith("postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return v


class StorageConfig(_Section):
    dir: str = "./data/assets"


Device = Literal["cpu", "cuda", "auto"]


def is_model_folder(source: str) -> bool:
    """An [engine.models] source that names a folder (a path: absolute, ./ ../ ~, or an existing
    directory) rather than a faster-whisper model name or Hugging Face repo id."""
    return source.startswith(("/", "./", "../", "~")) or os.path.isdir(source)


def check_model_folder(path: str) -> str:
    if not (Path(path).expanduser() / "model.bin").is_file():
        raise ValueError(f"{path!r} is not a CTranslate2 Whisper model folder (no model.bin)")
    return path


class ModelEntry(_Section):
    """One [engine.models] entry: a folder or a model name, and (optionally) where it runs."""

    source: str = Field(min_length=1)
    device: Optional[Device] = None  # None: engine.device
    compute_type: Optional[str] = None  # None: engine.compute_type

    @model_validator(mode="before")
    @classmethod
    def _plain_source(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v  # alias = "large-v3" is {source = "large-v3"}

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if is_model_folder(v):
            return check_model_folder(v)
        if "/" in v.strip("/") and v.count("/") == 1:
            return v  # a Hugging Face repo id of a CTranslate2 model, e.g. Systran/faster-whisper-small
        from faster_whisper.utils import available_models

        if v not in available_models():
            raise ValueError(f"{v!r} is neither a model folder (a path) nor a faster-whisper model name "
                             f"({', '.join(available_models())}) nor a Hugging Face repo id (owner/name)")
        return v


class EngineConfig(_Section):
    model_alias: str = "whisper-1"
    model_path: str = ""
    device: Device = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = Field(0, ge=0)
    concurrency: int = Field(1, ge=1)
    beam_size: int = Field(5, ge=1)
    batch_size: int = Field(8, ge=0, le=64)
    vad_filter: bool = True
    block_s: float = Field(600, ge=30)
    speaker_labels: bool = True
    speaker_threshold: float = Field(0.28, gt=0, lt=2)
    speaker_step_s: float = Field(0.5, ge=0.1, le=1.6)
    known_speaker_threshold: float = Field(0.82, gt=0, lt=1)  # gateway/voiceprints.py: match; bench/known_speakers.py
    known_speaker_narrowband_threshold: float = Field(0.91, gt=0, lt=1)  # the same, of telephone-band audio
    models: dict[str, ModelEntry] = {}  # alias -> more local models, besides model_alias (gateway/local_models.py)
    model_idle_s: float = Field(300, ge=0)  # an [engine.models] model unused this long unloads; 0 = never
    download_dir: str = "./data/models"  # models given by name: a Hugging Face cache (models pull fills it)

    @field_validator("model_path")
    @classmethod
    def _model_dir(cls, v: str) -> str:
        return check_model_folder(v) if v else v

    @field_validator("models")
    @classmethod
    def _aliases(cls, v: dict[str, ModelEntry], info: ValidationInfo) -> dict[str, ModelEntry]:
        if (default := info.data.get("model_alias")) in v:
            raise ValueError(f"{default!r} is engine.model_alias already (the default model: "
                             "engine.model_path chooses its folder)")
        return v


class JobsConfig(_Section):
    lease_s: float = Field(60, gt=0)
    max_attempts: int = Field(3, ge=1)
    poll_s: float = Field(1.0, gt=0)
    retry_backoff_s: float = Field(5.0, ge=0)
    retry_backoff_max_s: float = Field(600, gt=0)

    @property
    def backoff(self) -> Backoff:
        """When a failed task is tried again."""
        return Backoff(self.retry_backoff_s, self.retry_backoff_max_s)


class WebhooksConfig(_Section):
    urls: list[str] = []
    secret: str = ""
    max_attempts: int = Field(8, ge=1)
    timeout_s: float = Field(10, gt=0)
    backoff_base_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(600, gt=0)

    @property
    def backoff(self) -> Backoff:
        """When a failed webhook or plugin delivery is tried again."""
        return Backoff(self.backoff_base_s, self.backoff_max_s)

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: str) -> str:
        return validate_whsec(v)

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        from gateway.urls import validate_http_url

        for u in v:
            validate_http_url(u)
        return v


class RetentionConfig(_Section):
    """How long data is kept, in days (0 = forever); the workers' sweep deletes what is older."""

    audio_days: int = Field(0, ge=0)  # an uploaded file, counted from its upload
    transcripts_days: int = Field(0, ge=0)  # a finished task, counted from when it finished
    sweep_s: float = Field(3600, gt=0)  # how often a worker sweeps


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class PluginsConfig(BaseModel):
    """`load` chooses plugins (None = every installed one); each other key is a plugin's section,
    validated by that plugin at start-up."""

    model_config = ConfigDict(extra="allow")

    load: Optional[list[str]] = None

    @field_validator("load", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        if isinstance(v, str):  # TGW_PLUGINS__LOAD=slack,srt
            return [name.strip() for name in v.split(",") if name.strip()]
        return v

    @model_validator(mode="after")
    def _tables(self):
        for name, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                raise ValueError(f"[plugins.{name}] must be a table")
        return self

    def sections(self) -> dict[str, dict[str, Any]]:
        return dict(self.model_extra or {})


class Config(_Section):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    storage: StorageConfig = StorageConfig()
    engine: EngineConfig = EngineConfig()
    jobs: JobsConfig = JobsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    retention: RetentionConfig = RetentionConfig()
    log: LogConfig = LogConfig()
    # Provider sections are free-form tables here; their owners validate them.
    providers: dict[str, dict[str, Any]] = {}
    plugins: PluginsConfig = PluginsConfig()

    def provider(self, name: str) -> dict[str, Any]:
        return self.providers.get(name, {})


def _set_path(tree: dict, path: list[str], raw: str, env_name: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{env_name}: {'.'.join(path[:-1])} is not a table")
        node = child
    node[path[-1]] = _env_value(raw)


def _env_value(raw: str) -> Any:
    """Environment values: JSON when they parse as JSON (lists, tables, numbers, booleans), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _env_keys(environ: dict[str, str]) -> dict[tuple[str, ...], str]:
    """The configuration key path of every `TGW_<SECTION>__<KEY>` variable: (section, key) -> name."""
    keys = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
        if any(not p for p in path):
            raise ConfigError(f"{name}: empty key in environment variable name")
        keys[path] = name
    return keys


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    for path, name in _env_keys(environ).items():
        _set_path(tree, list(path), environ[name], name)
    return tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _describe(err: ValidationError, env_keys: dict[tuple[str, ...], str]) -> str:
    """One clause per error, naming the key (and the environment variable that set it, if one did)."""
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        source = next((name for n in range(len(loc), 0, -1) if (name := env_keys.get(loc[:n]))), None)
        lines.append(describe_error(e) + (f" (from {source})" if source else ""))
    return "; ".join(lines)


def load_config(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Read TOML (if given), apply environment then explicit overrides, validate."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    environ = os.environ if environ is None else environ
    data = _merge(data, env_overrides(environ))
    if overrides:
        data = _merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc, _env_keys(environ))}") from None
