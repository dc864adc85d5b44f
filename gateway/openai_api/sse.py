"""The streamed answer of stream=true: server-sent events as the `openai` client reads them,
`data: {json}` and a blank line each: `transcript.text.delta` events with each piece of text,
then `transcript.text.done` with the whole text, or, if the task fails or outlasts
server.sync_timeout_s, one event with OpenAI's error body (the client raises it as an APIError).

`write_events` takes any async iterator of text deltas; `deltas` gives a task's: each segment's
text as the engine decodes it (`gateway.partials.follow`, from whichever process runs the task),
then what its result adds.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable

import orjson
import structlog
from aiohttp import web

from gateway import partials, views
from gateway.appkeys import CONFIG, DB, NOTIFIER
from gateway.errors import ApiError
from gateway.models import Task, TaskStatus
from gateway.openai_api import answers, errors, formats

log = structlog.get_logger(__name__)

NO_TOKENS = answers.TokensUsage(type="tokens", input_tokens=0, output_tokens=0, total_tokens=0)


async def deltas(app: web.Application, task: Task) -> AsyncIterator[str]:
    """The text deltas of the task as it is decoded, a blank before every one but the first, so
    that they join into the whole text."""
    first = True
    async for text in partials.follow(app[DB], app[NOTIFIER], task.id, app[CONFIG].jobs.poll_s):
        yield text if first else " " + text
        first = False


def event(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def done_event(task: Task) -> dict:
    text = formats.text_of(views.task_view(task)["result"]["data"])
    return answers.TextDone(type="transcript.text.done", text=text, usage=NO_TOKENS).model_dump()


async def write_events(request: web.Request, pieces: AsyncIterator[str], timeout_s: float,
                       final: Callable[[], Awaitable[Task]], unfinished: Callable[[Task], ApiError],
                       headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Stream `pieces` as delta events for at most `timeout_s`, then `final()`'s task as the done
    event (or `unfinished(task)` as an error event). A client that goes away stops the stream,
    never the task."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no", **(headers or {})})
    await response.prepare(request)
    try:
        try:
            async with asyncio.timeout(timeout_s):
                async for piece in pieces:
                    if piece:
                        await response.write(event(answers.TextDelta(type="transcript.text.delta",
                                                                     delta=piece).model_dump()))
        except TimeoutError:
            pass
        finally:
            await pieces.aclose()
        task = await final()
        if task.status == TaskStatus.COMPLETED:
            await response.write(event(done_event(task)))
        else:
            failure = unfinished(task)
            await response.write(event(errors.body(failure.status, failure.message, param=failure.param,
                                                   code=failure.code)))
        await response.write_eof()
    except (ConnectionResetError, ConnectionError) as exc:
        log.info("openai.stream_left", error=type(exc).__name__)  # the task goes on
    return response
