"""Slack: posts a Block Kit message to an incoming webhook for every finished task.

Within Slack's limits by construction: section text <= 3000 characters, <= 50 blocks, the
transcript's opening truncated with an ellipsis at `max_chars`; slack_sdk's block models
validate the message before it is sent. HTTP 429 is retried after its Retry-After.
"""

from __future__ import annotations

from pydantic import Field

from gateway.hookspecs import hookimpl
from gateway.plugins import PluginConfig, RetryAfter
from gateway.retry import retry_after_s
from gateway.urls import redact

SECTION_MAX = 3000
MAX_BLOCKS = 50
HEADER_MAX = 150


class SlackConfig(PluginConfig):
    webhook_url: str = ""
    max_chars: int = Field(2800, ge=100, le=40000)  # transcript text shown, in total
    max_turns: int = Field(20, ge=1, le=MAX_BLOCKS - 5)  # speaker turns shown, one section each

    def active(self) -> bool:
        return bool(self.webhook_url)


@hookimpl
def plugin_config():
    return SlackConfig


def escape(text: str) -> str:
    """Slack mrkdwn control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, ending in an ellipsis when cut (never inside an &entity;)."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&")
    if amp > cut.rfind(";"):
        cut = cut[:amp]
    return cut.rstrip() + "…"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def turns(segments) -> list[tuple[str | None, str]]:
    """Consecutive segments of one speaker joined into a turn."""
    out: list[tuple[str | None, str]] = []
    for seg in segments:
        if out and out[-1][0] == seg.speaker:
            out[-1] = (seg.speaker, out[-1][1] + " " + seg.text)
        else:
            out.append((seg.speaker, seg.text))
    return out


def display_name(task) -> str:
    """What a message calls the task: its file name, its url (credentials redacted), or its id."""
    return task.filename or redact(task.url) or task.task_id


def completed_blocks(task, transcript, cfg: SlackConfig) -> list[dict]:
    name = display_name(task)
    facts = [f"*Duration* {_duration(transcript.duration)}", f"*Model* {escape(transcript.model)}",
             f"*Segments* {len(transcript.segments)}"]
    if task.speaker:
        facts.insert(1, f"*Speakers* {len(transcript.speakers)}")
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(f"Transcript ready: {name}", HEADER_MAX)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "   ".join(facts)}]},
    ]
    budget = cfg.max_chars
    shown = turns(transcript.segments)
    cut = len(shown) > cfg.max_turns
    sections: list[tuple[str, str]] = []
    for speaker, text in shown[: cfg.max_turns]:
        label = f"*{speaker}*  " if speaker else ""
        room = min(SECTION_MAX - len(label), budget)
        if room < 2:
            cut = True
            break
        body = clip(escape(text), room)
        cut = cut or body.endswith("…")
        budget -= len(body)
        sections.append((label, body))
    if cut and sections and not sections[-1][1].endswith("…"):
        label, body = sections[-1]
        sections[-1] = (label, clip(body, SECTION_MAX - len(label) - 1) + "…")
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": label + body}} for label, body in sections]
    if not transcript.segments:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "_No speech was found._"}})
    if task.link:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{task.link}|Open task {task.task_id}>"}]})
    return blocks[:MAX_BLOCKS]


def failed_blocks(task, error: str) -> list[dict]:
    name = display_name(task)
    text = f":warning: *Transcription failed:* {escape(name)}\n{escape(error)}"
    if task.link:
        text += f"\n<{task.link}|Open task {task.task_id}>"
    return [{"type": "section", "text": {"type": "mrkdwn", "text": clip(text, SECTION_MAX)}}]


async def post(cfg: SlackConfig, text: str, blocks: list[dict]) -> None:
    from slack_sdk.models.blocks import Block
    from slack_sdk.webhook.async_client import AsyncWebhookClient

    for block in Block.parse_all(blocks):  # slack_sdk's own validation of every block
        block.validate_json()
    client = AsyncWebhookClient(cfg.webhook_url, timeout=int(cfg.timeout_s))
    resp = await client.send(text=clip(text, 3000), blocks=blocks)
    if resp.status_code == 429:
        raise RetryAfter(_retry_after(resp.headers.get("Retry-After")), "Slack answered 429 (rate limited)")
    if resp.status_code != 200:
        raise RuntimeError(f"Slack answered HTTP {resp.status_code}: {resp.body[:200]}")


def _retry_after(value) -> float:
    seconds = retry_after_s(value)  # delta-seconds or an HTTP date
    return 30.0 if seconds is None else seconds  # absent or unreadable: wait a reasonable while


@hookimpl
async def transcript_completed(task, transcript, config: SlackConfig):
    name = display_name(task)
    await post(config, f"Transcript ready: {name}", completed_blocks(task, transcript, config))


@hookimpl
async def transcript_failed(task, error, config: SlackConfig):
    name = display_name(task)
    await post(config, f"Transcription failed: {name}: {error}", failed_blocks(task, error))
