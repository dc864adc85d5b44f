"""The embedded engine as a provider: faster-whisper in this process's ASR thread pool."""

from __future__ import annotations

from gateway.audio import AudioError
from gateway.engine import LocalEngine, TranscribeRequest
from gateway.local_models import ModelUnavailable
from gateway.options import TaskOptions
from gateway.payloads import Outcome
from gateway.providers import Job, PermanentError, Provider, ProviderError
from gateway.speakers import Hints


class LocalProvider(Provider):
    """Serves `engine.model_alias` and the aliases of [engine.models]; [providers.local] holds only
    `secret` (for workers on other machines reporting over POST /callbacks/local). A model given by
    name and not downloaded yet is downloaded here, at start-up; where it cannot be, start-up
    stops in one line."""

    honours = frozenset(TaskOptions.model_fields)  # known speakers: stored until they are matched

    def __init__(self, name, settings, config):
        super().__init__(name, settings, config)
        self.engine = LocalEngine(config.engine)
        self.supports_speaker = config.engine.speaker_labels
        try:
            self.engine.models.check()
        except ModelUnavailable as exc:
            self.engine.close()
            raise ProviderError(str(exc)) from None

    def models(self) -> dict[str, str]:
        return {alias: src.source for alias, src in self.engine.models.sources.items()}

    @property
    def concurrency(self) -> int:
        return self.config.engine.concurrency

    async def run(self, job: Job) -> Outcome:
        task = job.task
        async with job.audio() as path:
            req = TranscribeRequest(path=str(path), language=task.language, speaker=task.speaker,
                                    hints=Hints(task.num_speakers, task.min_speakers, task.max_speakers),
                                    max_audio_s=self.config.server.max_audio_s, options=job.options,
                                    model=task.model)
            try:
                return await self.engine.transcribe(req, job.progress, job.partial, job.cancelled)
            except (AudioError, ModelUnavailable) as exc:
                raise PermanentError(str(exc)) from None

    def close(self) -> None:
        self.engine.close()
