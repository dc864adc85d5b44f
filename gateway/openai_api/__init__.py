"""The OpenAI-compatible transcription API under /v1, so the official `openai` client (and the
tools built on it) works with `base_url="http://host:port/v1"`.

Every request is an ordinary task of the gateway (the same queue, the same idempotent door, the
same deliveries), which the HTTP request waits for. Modules: `routes` (the handlers), `forms`
(the multipart requests parsed and validated), `submit` (a request turned into a task and
waited for), `formats` (a completed task rendered in each response_format), `sse` (the
streamed answer), `catalogue` (the model list), `answers` (the models of every answer, as the
`openai` package's types), `errors` (OpenAI's error body), `languages` (Whisper's names).
"""

V1 = "/v1"
