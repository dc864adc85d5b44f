"""Providers run tasks: the embedded engine (`local`), or a remote service (`memories`,
`openai`). Each is registered through the `register_providers(register)` hook, the
first-party ones too (`gateway.providers.builtin`, a default plugin); `Providers` is the
registry of one process: which providers are configured, and which model alias runs where.

A provider's `run(job)` returns an `Outcome` (the result, for the one door `ingest`) or a
`Pending` (submitted upstream; the result comes later to POST /callbacks/<name>). It raises
`PermanentError` for a task that can never succeed, any other exception to be retried.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncContextManager, Awaitable, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.config import Config, validate_whsec
from gateway.models import Task
from gateway.options import TaskOptions, options_of
from gateway.payloads import Outcome
from gateway.validation import MESSAGES, describe_validation_error

LOCAL = "local"


class ProviderError(Exception):
    """A provider cannot be registered or configured; the message names the key."""


class PermanentError(Exception):
    """The task cannot succeed however often it is tried; it fails with this reason."""

    def __init__(self, message: str, code: str = "4000"):
        super().__init__(message)
        self.code = code


class RetryableError(Exception):
    """This attempt failed for a reason that may pass (HTTP 5xx, 429, a timeout)."""


class TaskCancelled(Exception):
    """The task was cancelled or deleted while it ran: `job.progress` raises it once the task
    loop knows; the run stops, with no result and no retry."""


class ProviderSettings(BaseModel):
    """Keys every [providers.<name>] table has; a provider's own model extends this."""

    model_config = ConfigDict(extra="forbid")

    secret: str = ""  # verifies Standard Webhooks signatures on POST /callbacks/<name>

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: str) -> str:
        return validate_whsec(v)


class RemoteSettings(ProviderSettings):
    """A hosted service: where it is, the key, which aliases it serves, how long to wait."""

    base_url: str
    api_key: str = ""
    models: dict[str, str] = {}  # alias clients send -> the service's model name
    concurrency: int = Field(4, ge=1)  # tasks of this provider handled at once per worker
    request_timeout_s: float = Field(120, gt=0)  # one HTTP request (an upload included)

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")


@dataclass(frozen=True)
class Pending:
    """Submitted to the provider, which answers by callback within `wait_s` seconds."""

    upstream_task_id: str
    wait_s: float


async def _nothing() -> None:
    return None


@dataclass
class Job:
    """What a provider gets to run one task."""

    task: Task
    config: Config
    http: Any  # aiohttp.ClientSession
    audio: Callable[[], AsyncContextManager[Path]]  # `async with job.audio() as path`: the input file
    progress: Callable[[float], None]
    # `job.partial(start, end, text)`, on the event loop: a segment decoded while the task runs,
    # for followers of its text (gateway/partials.py); stored by the task loop about once a second
    partial: Callable[[float, float, str], None] = lambda start, end, text: None
    # `await job.submitting()` right before the request that creates the upstream job (a provider
    # with third_party_callbacks): a callback overtaking the stored upstream id then waits for it
    submitting: Callable[[], Awaitable[None]] = _nothing
    # set once the task was cancelled or deleted; from then `job.progress` raises TaskCancelled (a
    # provider whose work runs in a thread checks it there: the local engine at each report)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def options(self) -> TaskOptions:
        """The task's engine options (gateway/options.py)."""
        return options_of(self.task)


class Provider:
    """Base of every provider: validated settings, the aliases it serves, `run`."""

    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings
    supports_speaker: ClassVar[bool] = False
    # The engine options (gateway/options.py TaskOptions fields) it honours: a request asking
    # another of them is refused, naming it. None: not declared; the provider reads what it can
    # of job.options and the rest is not checked (third-party providers written before options).
    honours: ClassVar[frozenset[str] | None] = None
    # Callbacks come from the service itself, which cannot send our API key: without a secret
    # they are accepted without one, and only find a task by an upstream id we were given.
    third_party_callbacks: ClassVar[bool] = False
    # run() calls `await job.submitting()` itself; if not (and third_party_callbacks), the whole
    # of run() counts as submitting, so any unknown callback id waits while it runs
    marks_submission: ClassVar[bool] = False
    callback_timeout_s: float | None = None  # how long a Pending waits for its callback

    def __init__(self, name: str, settings: ProviderSettings, config: Config):
        self.name = name
        self.settings = settings
        self.config = config

    @property
    def callbacks_skip_api_key(self) -> bool:
        """Its callbacks are not asked for our API key: they are signed with its secret, or come
        from the service itself."""
        return bool(self.settings.secret) or self.third_party_callbacks

    def models(self) -> dict[str, str]:
        """Alias clients send -> the name the provider knows the model by."""
        return dict(getattr(self.settings, "models", {}))

    @property
    def concurrency(self) -> int:
        return getattr(self.settings, "concurrency", 1)

    async def run(self, job: Job) -> Outcome | Pending:
        raise NotImplementedError

    def close(self) -> None:
        """Called when the process stops."""


def _key_error(name: str, exc: ValidationError) -> ProviderError:
    return ProviderError(describe_validation_error(exc, root=("providers", name),
                                                   messages={**MESSAGES, "missing": "is required"}))


class Providers:
    """The configured providers of one process and the alias -> provider routes.

    `local` is always there; another provider is active when its [providers.<name>] table
    exists. Raises ProviderError naming the key for any bad table or clashing alias."""

    def __init__(self, config: Config, plugins):
        classes: dict[str, type[Provider]] = {}

        def register(name: str, provider: type[Provider]) -> None:
            if name in classes:
                raise ProviderError(f"provider {name!r} is registered twice")
            classes[name] = provider

        plugins.pm.hook.register_providers(register=register)
        for name in config.providers:
            if name not in classes:
                raise ProviderError(f"providers.{name}: no provider named {name!r} is registered "
                                    f"(registered: {', '.join(sorted(classes))})")
        self.active: dict[str, Provider] = {}
        self.routes: dict[str, str] = {}
        for name, cls in classes.items():
            if name != LOCAL and name not in config.providers:
                continue
            try:
                settings = cls.Settings.model_validate(config.provider(name))
            except ValidationError as exc:
                raise _key_error(name, exc) from None
            provider = cls(name, settings, config)
            self.active[name] = provider
            for alias in provider.models():
                if alias in self.routes:
                    raise ProviderError(f"providers.{name}.models: alias {alias!r} is already served by "
                                        f"provider {self.routes[alias]!r}")
                self.routes[alias] = name

    def get(self, name: str) -> Provider:
        return self.active[name]

    def names(self) -> list[str]:
        return list(self.active)

    def provider_for(self, model: str) -> str | None:
        return self.routes.get(model)
