"""The hosted memories.ai API as a provider: upload, submit with a callback URL, wait.

    POST {base_url}/upload                              multipart `file` -> data.asset_id
    POST {base_url}/transcriptions/async-generate-audio JSON asset_id (or url), model, speaker,
                                                        callback_url -> data.task_id
with `Authorization: <api_key>`. The service later POSTs the callback payload, with its own
task_id, to `server.public_url` + /serve/api/v2/callbacks/memories; that enters the one
idempotent door like any other result. The task fails if no callback comes within timeout_s.
"""

from __future__ import annotations

from pydantic import Field

from gateway import API_BASE
from gateway.providers import Job, PermanentError, Pending, Provider, ProviderError, RemoteSettings
from gateway.providers.remote import file_form, raise_for_status, request

SERVICE = "memories.ai"
SUCCESS = "0000"


class MemoriesSettings(RemoteSettings):
    base_url: str = "https://api.memories.ai/serve/api/v2"
    api_key: str = Field(min_length=1)
    models: dict[str, str] = {"memories-whisper": "whisper-1"}
    timeout_s: float = Field(3600, gt=0)  # how long to wait for the callback


class MemoriesProvider(Provider):
    Settings = MemoriesSettings
    supports_speaker = True
    honours = frozenset()  # its API has no word timestamps, prompt or hotwords
    third_party_callbacks = True
    marks_submission = True

    def __init__(self, name, settings, config):
        super().__init__(name, settings, config)
        if not config.server.public_url:
            raise ProviderError(f"providers.{name}: server.public_url must be set: memories.ai calls "
                                f"back <public_url>{API_BASE}/callbacks/{name}")
        self.callback_url = config.server.public_url.rstrip("/") + f"{API_BASE}/callbacks/{name}"
        self.callback_timeout_s = settings.timeout_s

    async def _call(self, job: Job, step: str, path: str, **kwargs) -> dict:
        s = self.settings
        status, body = await request(job.http, SERVICE, step, s.base_url + path, timeout_s=s.request_timeout_s,
                                     headers={"Authorization": s.api_key}, **kwargs)
        envelope = body if isinstance(body, dict) else {}
        message = str(envelope.get("msg") or body)[:500]
        raise_for_status(SERVICE, step, status, message)
        if envelope.get("code") != SUCCESS or not isinstance(envelope.get("data"), dict):
            raise PermanentError(f"{SERVICE} {step}: code {envelope.get('code')!r}: {message}")
        return envelope["data"]

    async def _upload(self, job: Job) -> str:
        async with job.audio() as path:
            with open(path, "rb") as f:
                data = await self._call(job, "upload", "/upload", data=file_form(f, path.name))
        return str(data["asset_id"])

    async def run(self, job: Job) -> Pending:
        task = job.task
        body = {"model": self.models()[task.model], "speaker": task.speaker, "callback_url": self.callback_url}
        if task.url:
            body["url"] = task.url  # the service fetches it itself
        else:
            body["asset_id"] = await self._upload(job)
        if task.language:
            body["language"] = task.language
        if task.num_speakers:
            body["num_speakers"] = task.num_speakers
        await job.submitting()
        data = await self._call(job, "async-generate-audio", "/transcriptions/async-generate-audio", json=body)
        return Pending(upstream_task_id=str(data["task_id"]), wait_s=self.settings.timeout_s)
