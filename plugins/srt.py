"""Subtitles: writes <output_dir>/<task_id>.srt and .vtt for every completed transcript, again
when its speakers are named, and removes them when the task is deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import field_validator

from gateway.hookspecs import hookimpl
from gateway.plugins import PluginConfig
from gateway.subtitles import render, write_atomic


Format = Literal["srt", "vtt", "txt", "json"]


class SrtConfig(PluginConfig):
    output_dir: str = "./data/subtitles"
    formats: list[Format] = ["srt", "vtt"]

    @field_validator("formats")
    @classmethod
    def _not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one format")
        return list(dict.fromkeys(v))


@hookimpl
def plugin_config():
    return SrtConfig


def _write(task, transcript, formats, output_dir: Path) -> None:
    result = {"data": [s.as_dict() for s in transcript.segments],
              "usage_metadata": {"duration": transcript.duration, "model": transcript.model}}
    for fmt in formats:
        write_atomic(output_dir / f"{task.task_id}.{fmt}", render(fmt, transcript.segments, result))


@hookimpl
def transcript_completed(task, transcript, config: SrtConfig):
    # Rewriting the same task writes the same bytes: a repeated delivery is harmless.
    _write(task, transcript, config.formats, Path(config.output_dir))


@hookimpl
def transcript_updated(task, transcript, config: SrtConfig):
    """The files written for the task, written again (those not written yet come with its delivery)."""
    out = Path(config.output_dir)
    _write(task, transcript, [fmt for fmt in config.formats if (out / f"{task.task_id}.{fmt}").exists()], out)


@hookimpl
def transcript_deleted(task_id, config: SrtConfig):
    # every format it can write: `formats` may have changed since these files were written
    for fmt in get_args(Format):
        (Path(config.output_dir) / f"{task_id}.{fmt}").unlink(missing_ok=True)
