"""The plugin manager: loads plugins from the `transcribe_gateway` entry-point group (the
first-party ones too), validates their config sections, and calls one plugin's
implementation of a hook at a time, so each plugin is delivered to and retried alone.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import hookspecs
from gateway.payloads import Segment
from gateway.validation import describe_validation_error

if TYPE_CHECKING:  # gateway.config and gateway.db import this module's PluginConfig / plugins
    from aiohttp import web

    from gateway.config import Config
    from gateway.db import Database

log = structlog.get_logger(__name__)

GROUP = "transcribe_gateway"
# Built into the gateway and registered like any plugin (as llm's default_plugins), but always
# loaded and not listed: the first-party providers.
DEFAULT_PLUGINS = ("gateway.providers.builtin",)


class PluginError(Exception):
    """A plugin cannot be loaded or configured; the message names it."""


class RetryAfter(Exception):
    """Raised by a plugin to have its delivery retried after `seconds` (e.g. HTTP 429 Retry-After)."""

    def __init__(self, seconds: float, message: str = ""):
        super().__init__(message or f"retry after {seconds:g}s")
        self.seconds = seconds


class PluginConfig(BaseModel):
    """Keys every [plugins.<name>] section has; a plugin's own model extends this."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(8, ge=1)
    timeout_s: float = Field(60, gt=0)

    def active(self) -> bool:
        """Whether the plugin gets deliveries; e.g. Slack only once a webhook_url is set."""
        return True


class _FreeformConfig(PluginConfig):
    model_config = ConfigDict(extra="allow")


@dataclass
class GatewayContext:
    """The running gateway, as plugins see it (`startup` and the `gateway` argument of hooks)."""

    config: Config
    db: Database
    app: web.Application | None = None


@dataclass(frozen=True)
class TaskInfo:
    """What a plugin learns about a task."""

    task_id: str
    status: str
    model: str
    provider: str
    speaker: bool
    language: str | None
    asset_id: str | None
    filename: str | None
    url: str | None
    created_at: datetime
    finished_at: datetime | None
    link: str | None  # the task's status URL under server.public_url, if that is set


@dataclass(frozen=True)
class TranscriptInfo:
    """A completed transcript: segments in time order and the audio's duration."""

    segments: tuple[Segment, ...]
    duration: float
    model: str
    speakers: tuple[str, ...] = field(default=())

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)


def transcript_from_payload(payload: dict) -> TranscriptInfo:
    inner = payload["data"]["data"]
    segments = tuple(Segment(s["start_time"], s["end_time"], s["text"], s["speaker"]) for s in inner["data"])
    speakers = tuple(dict.fromkeys(s.speaker for s in segments if s.speaker))
    usage = inner["usage_metadata"]
    return TranscriptInfo(segments=segments, duration=usage["duration"], model=usage["model"], speakers=speakers)


def installed_entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _migrations_of(name: str, ep: Any) -> dict[str, Any]:
    """The versions folder of an installed plugin that is not loaded, if it has one."""
    try:
        module = ep.load()
    except Exception as exc:
        log.warning("plugins.not_importable", plugin=name, error=f"{type(exc).__name__}: {exc}")
        return {}
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    pm.register(module, name=name)
    return {name: impl.function() for impl in pm.hook.migrations.get_hookimpls()}


TRACE_ENV = "TGW_TRACE_PLUGINS"  # set (to anything but ""): every hook call is logged


def trace_hook_calls(pm: pluggy.PluginManager) -> None:
    """Log every hook call, its plugins, arguments and results (as datasette's
    DATASETTE_TRACE_PLUGINS), at info level: `plugin.hook_call` and `plugin.hook_result`."""

    def before(hook_name, hook_impls, kwargs):
        log.info("plugin.hook_call", hook=hook_name, plugins=[impl.plugin_name for impl in hook_impls],
                 args={k: _short(v) for k, v in kwargs.items()})

    def after(outcome, hook_name, hook_impls, kwargs):
        exc = outcome.exception
        log.info("plugin.hook_result", hook=hook_name, plugins=[impl.plugin_name for impl in hook_impls],
                 error=f"{type(exc).__name__}: {exc}" if exc else None,
                 result=None if exc else _short(outcome.get_result()))

    pm.add_hookcall_monitoring(before, after)


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


class Plugins:
    """The loaded plugins of one process, and their validated configuration."""

    def __init__(self, load: list[str] | None, sections: dict[str, Any]):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get(TRACE_ENV):
            trace_hook_calls(self.pm)
        for module_name in DEFAULT_PLUGINS:
            self.pm.register(importlib.import_module(module_name), name=module_name)
        available = installed_entry_points()
        names = list(available) if load is None else load
        for name in names:
            if name not in available:
                raise PluginError(f"plugins.load: no plugin named {name!r} is installed "
                                  f"(installed: {', '.join(sorted(available)) or 'none'})")
            try:
                module = available[name].load()
            except Exception as exc:
                raise PluginError(f"plugin {name!r} ({available[name].value}) failed to load: "
                                  f"{type(exc).__name__}: {exc}") from None
            self.pm.register(module, name=name)
        for name in sections:
            if name not in available:
                raise PluginError(f"plugins.{name}: no plugin named {name!r} is installed")
        self.configs = {name: self._validate(name, sections.get(name, {})) for name in self.names()}
        self.context: GatewayContext | None = None  # set once the gateway has started
        self._dists = {name: available[name].dist for name in self.names()}

    def register(self, plugin: Any, name: str, section: dict | None = None) -> None:
        """Register a plugin object directly (embedding, tests); its section is validated the same way."""
        self.pm.register(plugin, name=name)
        self.configs[name] = self._validate(name, section or {})

    def names(self) -> list[str]:
        """The loaded plugins (not the built-in default ones)."""
        return [name for name, _ in self.pm.list_name_plugin() if name not in DEFAULT_PLUGINS]

    def _validate(self, name: str, section: dict) -> PluginConfig:
        impl = self._impl("plugin_config", name)
        model = impl.function() if impl else _FreeformConfig
        try:
            return model.model_validate(section)
        except ValidationError as exc:
            raise PluginError(describe_validation_error(exc, root=("plugins", name))) from None

    def _impl(self, hook: str, name: str):
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == name:
                return impl
        return None

    def implementing(self, hook: str) -> list[str]:
        """Names of the loaded plugins that implement `hook`, in registration order."""
        impls = {impl.plugin_name for impl in getattr(self.pm.hook, hook).get_hookimpls()}
        return [n for n in self.names() if n in impls]

    def delivery_targets(self, hook: str) -> list[str]:
        """The plugins that get a delivery for `hook`: implementing it, and active by their config."""
        return [n for n in self.implementing(hook) if self.configs[n].active()]

    def _caller(self, hook: str, name: str):
        """(pluggy's hook caller for `hook` with only plugin `name`'s implementations and its own
        wrappers, that implementation): each plugin is called, and so delivered to and retried,
        alone, while pluggy still checks the arguments, runs the wrappers and traces the call."""
        impl = self._impl(hook, name)
        if impl is None:
            raise PluginError(f"plugin {name!r} does not implement {hook}")
        others = [plugin for other, plugin in self.pm.list_name_plugin() if other != name]
        return self.pm.subset_hook_caller(hook, remove_plugins=others), impl

    async def call_one(self, hook: str, name: str, **kwargs) -> Any:
        """Call plugin `name`'s implementation of `hook`; sync ones run in a thread."""
        caller, impl = self._caller(hook, name)
        kwargs.setdefault("gateway", self.context)
        if inspect.iscoroutinefunction(impl.function):
            results = caller(**kwargs)
        else:
            results = await asyncio.to_thread(caller, **kwargs)
        result = results[0] if results else None  # pluggy leaves out a None result
        if inspect.isawaitable(result):
            result = await result
        return result

    async def tell_each(self, hook: str, names: list[str], for_task: str, **kwargs) -> list[str]:
        """Plugins `names` told of task `for_task` through `hook` (its arguments: `kwargs`), each
        with its own section as `config`, outside any delivery (nothing retried): one that fails is
        logged with its reason and the others are still told; the names of those that failed."""
        failed = []
        for name in names:
            try:
                await self.call_one(hook, name, config=self.configs[name], **kwargs)
            except Exception as exc:
                log.error("plugin.hook_failed", hook=hook, task_id=for_task, plugin=name,
                          error=f"{type(exc).__name__}: {exc}")
                failed.append(name)
        return failed

    async def call_all(self, hook: str, **kwargs) -> list[Any]:
        return [await self.call_one(hook, name, **kwargs) for name in self.implementing(hook)]

    def call_all_sync(self, hook: str, **kwargs) -> list[Any]:
        """For hooks that run before the event loop (register_routes, register_commands); each
        plugin gets its own section as `config`."""
        out = []
        for name in self.implementing(hook):
            caller, _ = self._caller(hook, name)
            out.extend(caller(**{"config": self.configs[name], **kwargs}))
        return out

    def migrations(self, *, installed: bool = False) -> dict[str, Path]:
        """Each loaded plugin's Alembic versions folder (the `migrations` hook), by plugin name;
        with `installed`, also those of the installed plugins that are not loaded (imported for
        this alone, to downgrade or read their branches; one that fails to import is left out)."""
        found = {name: self._impl("migrations", name).function() for name in self.implementing("migrations")}
        if installed:
            for name, ep in installed_entry_points().items():
                if name not in found and name not in self.names():
                    found.update(_migrations_of(name, ep))
        folders = {name: Path(folder) for name, folder in found.items()}
        for name, folder in folders.items():
            if not folder.is_dir():
                raise PluginError(f"plugin {name!r}: migrations() returned {str(folder)!r}, which is not a folder")
        return folders

    def describe(self) -> list[dict[str, Any]]:
        """Name, distribution, version and hooks of every loaded plugin."""
        out = []
        for name in self.names():
            plugin = self.pm.get_plugin(name)
            hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
            dist = self._dists.get(name)
            out.append({"name": name, "package": dist.name if dist else None,
                        "version": dist.version if dist else None, "hooks": hooks})
        return out
