"""The /v1 renderings as plain functions over stored results: shaped as the engine stores them
with word timestamps and decoder details (what the echo provider cannot yet put through the
payload), and as other providers store them (without), each read back by the `openai` package's
own types."""

from __future__ import annotations

import base64

import pytest
from openai.types.audio import TranscriptionDiarized, TranscriptionVerbose

from gateway.openai_api import forms, formats
from gateway.languages import NAMES, name_of
from gateway.requests import WHISPER_LANGUAGES

PLAIN = {"data": [{"start_time": 0.0, "end_time": 1.5, "text": "Hello there.", "speaker": None},
                  {"start_time": 1.5, "end_time": 3.0, "text": "General Kenobi.", "speaker": None}],
         "usage_metadata": {"duration": 3.2, "model": "whisper-1", "output_tokens": 0, "prompt_tokens": 0}}
DETAILED = {
    "data": [
        {"start_time": 0.0, "end_time": 1.5, "text": "Hello there.", "speaker": None,
         "words": [{"word": " Hello", "start_time": 0.0, "end_time": 0.6}, {"word": " there.", "start_time": 0.6, "end_time": 1.5}],
         "avg_logprob": -0.21, "compression_ratio": 0.9, "no_speech_prob": 0.02, "temperature": 0.0,
         "tokens": [50364, 2425, 456, 13], "seek": 0},
        {"start_time": 1.5, "end_time": 3.0, "text": "General Kenobi.", "speaker": None,
         "words": [{"word": " General", "start_time": 1.5, "end_time": 2.1}, {"word": " Kenobi.", "start_time": 2.1, "end_time": 3.0}],
         "avg_logprob": -0.4, "compression_ratio": 0.8, "no_speech_prob": 0.05, "temperature": 0.2,
         "tokens": [6996, 591, 996, 13], "seek": 150}],
    "usage_metadata": {"duration": 3.2, "model": "whisper-1", "output_tokens": 0, "prompt_tokens": 0},
    "language": "de"}


def verbose(result, **shape) -> TranscriptionVerbose:
    body, media = formats.render(result, formats.Shape(response_format="verbose_json", **shape))
    assert media == "application/json"
    return TranscriptionVerbose.model_validate_json(body)


def test_verbose_json_carries_the_decoders_figures_and_words():
    answer = verbose(DETAILED, words=True)
    assert answer.language == "german"  # detected, as stored
    assert [(w.word, w.start, w.end) for w in answer.words] == [
        ("Hello", 0.0, 0.6), ("there.", 0.6, 1.5), ("General", 1.5, 2.1), ("Kenobi.", 2.1, 3.0)]
    second = answer.segments[1]
    assert (second.id, second.seek, second.tokens, second.temperature) == (1, 150, [6996, 591, 996, 13], 0.2)
    assert (second.avg_logprob, second.compression_ratio, second.no_speech_prob) == (-0.4, 0.8, 0.05)


def test_verbose_json_defaults_where_the_provider_gave_nothing():
    answer = verbose(PLAIN, language="fr")
    assert answer.language == "french"  # the one asked for
    assert verbose(PLAIN).language == "english"
    assert answer.words is None and answer.text == "Hello there. General Kenobi."
    assert [(s.seek, s.tokens, s.avg_logprob, s.no_speech_prob) for s in answer.segments] == [(0, [], 0.0, 0.0)] * 2
    assert verbose(PLAIN, words=True, segments=False).model_dump(exclude_unset=True).get("words") == []


def test_word_granularity_alone_omits_segments():
    answer = verbose(DETAILED, words=True, segments=False)
    assert answer.segments is None and len(answer.words) == 4


def test_a_translation_is_english_and_has_no_usage():
    answer = verbose(DETAILED, task=formats.TRANSLATE)
    assert (answer.task, answer.language, answer.usage) == ("translate", "english", None)
    body, _ = formats.render(PLAIN, formats.Shape(task=formats.TRANSLATE))
    assert body == b'{"text":"Hello there. General Kenobi."}'


def test_diarized_speakers_are_letters_in_order_known_names_kept():
    result = {**PLAIN, "data": [dict(s, speaker=label) for s, label in zip(
        PLAIN["data"] * 3, ["SPEAKER_00", "SPEAKER_01", "Alice", "SPEAKER_02", "SPEAKER_00", "SPEAKER_01"])]}
    body, _ = formats.render(result, formats.Shape(response_format="diarized_json"))
    answer = TranscriptionDiarized.model_validate_json(body)
    assert [s.speaker for s in answer.segments] == ["A", "B", "Alice", "C", "A", "B"]
    assert [s.id for s in answer.segments][:2] == ["seg_0", "seg_1"]
    assert [formats.speaker_letter(n) for n in (0, 25, 26, 27, 701, 702)] == ["A", "Z", "AA", "AB", "ZZ", "AAA"]


def test_text_srt_vtt():
    assert formats.render(PLAIN, formats.Shape(response_format="text")) == (
        b"Hello there. General Kenobi.\n", "text/plain")
    srt, media = formats.render(PLAIN, formats.Shape(response_format="srt"))
    assert media == "application/x-subrip" and srt.startswith(b"1\n00:00:00,000 --> 00:00:01,500\nHello there.")
    vtt, media = formats.render(PLAIN, formats.Shape(response_format="vtt"))
    assert media == "text/vtt" and vtt.startswith(b"WEBVTT\n\n00:00:00.000 --> 00:00:01.500")


def test_language_names_cover_every_whisper_language():
    assert set(NAMES) == WHISPER_LANGUAGES
    assert (name_of("EN"), name_of(None), name_of("xx")) == ("english", "english", "xx")


def data_url(payload: bytes, media: str = "audio/wav") -> str:
    return f"data:{media};base64," + base64.b64encode(payload).decode()


@pytest.mark.parametrize("value, error", [
    (data_url(b"RIFF" + bytes(100)), None),
    (data_url(b"x", "audio/mpeg;codecs=mp3"), None),
    (data_url(b"RIFF", "text/plain"), "must be a data URL of audio"),
    ("data:audio/wav,RIFF", "must be a data URL of audio"),  # not base64
    ("data:audio/wav;base64,@@@@", "not valid base64"),
    ("data:audio/wav;base64,", "holds no audio"),
    (data_url(bytes(forms.MAX_REFERENCE_BYTES + 1)), "at most 1048576"),
])
def test_known_speaker_references_are_bounded_audio_data_urls(value, error):
    if error is None:
        assert forms.audio_data_url(value) == value
    else:
        with pytest.raises(ValueError, match=error):
            forms.audio_data_url(value)
