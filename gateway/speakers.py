"""Speaker labelling (diarization) for the local engine: who spoke when, offline on the CPU.

    Silero voice activity (shipped by faster-whisper)
    → GE2E speaker embeddings (resemblyzer; its weights ship inside the package) of 1.6 s
      windows sliding through each stretch of speech
    → agglomerative clustering on cosine distance (average linkage), cut where merging would
      join windows further apart than `threshold` (or at the number of speakers asked for)
      (complete linkage, by the windows' largest distance, when there are only a few seconds of
      speech: there the windows straddling a change are a large share)
    → clusters that are not voices dissolved (a single window; too few windows for 2.5 s of
      speech and a centre within 0.3 of another's, or for 5 s and within 0.18; in a few seconds
      of speech, any cluster within 0.2: a cough, a mixture at a change; a short turn of a
      voice unlike every other stays, as the second voice of a 5-second clip; and mostly
      windows straddling a quick change between two other voices, or gathered from the edges
      of many turns near one voice), each window moved to its nearest cluster centre, then a
      majority filter over neighbouring windows within each stretch of speech, so one stray
      window never makes a turn
    → each stretch of speech, without the VAD's pad, shared among its windows (a speaker
      timeline; a speaker's pauses of up to 0.5 s inside a turn are the turn's); each word
      takes the label of the turn it falls in; segments are split at the word where the speaker
      changes, their edges trimmed to detected speech, then widened to the whole of their
      speaker's turns (whisper's segments begin late and end early), never into a neighbour;
      labels numbered by first appearance (SPEAKER_00 first; a voice heard only where nothing
      was transcribed numbered after the transcript's); the timeline itself is the result's
      `turns`.

Long audio comes in blocks (gateway/audio.py): each block's windows are embedded on their own
(`embed_block`), and the windows of all blocks are clustered together (`label_speakers`).
Everything here is a plain function of arrays, except `load_encoder` (once per process).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from gateway.payloads import Segment, SpeakerTurn, Word as PayloadWord

SAMPLE_RATE = 16000
FRAME_S = 0.01                  # resemblyzer's mel frame step
WINDOW_FRAMES = 160             # resemblyzer's partial utterance: 160 frames
WINDOW_S = WINDOW_FRAMES * FRAME_S
BATCH = 128                     # windows per forward pass
EMBEDDING = 0.9                 # the share of labelling's progress that embedding the windows stands for
MIN_SPEAKER_S = 2.5             # a cluster whose windows stand for less speech is absorbed ...
SMALL_APART = 0.3               # ... unless its centre is at least this cosine distance from every other;
CLOSE_FACTOR = 2.0              # one of less than this many times MIN_SPEAKER_S (mostly a mixture at
CLOSE_APART = 0.18              # changes) is absorbed when its centre is within this distance of another's
LONE_WINDOWS = 2                # in longer audio a cluster of fewer windows (one) is never a voice
SHORT_SPEECH_S = 8.0            # audio with no more speech than this (a 5-second clip) is clustered by
                                # complete linkage, and there any cluster is absorbed ...
SHORT_APART = 0.2               # ... when its centre is within this distance of another's
SPEECH_PAD_S = 0.1              # speech_regions pads each stretch of speech by this much either side
BRIDGE_S = 0.5                  # pauses up to this long between two pieces of one speaker are their turn's
TRANSITION_RUN = 3              # windows: a run this short between two other voices may be a change
TRANSITION_SHARE = 1 / 3        # a cluster with this share of such windows is a mixture, not a voice
BORDER_FACTOR = 3.0             # a cluster of less than this many times MIN_SPEAKER_S, with this share of
BORDER_SHARE = 3 / 8            # windows beside another voice's in their stretch and its centre within
BORDER_APART = 0.22             # this distance of another's, is a mixture of voices at their changes too
SINGLE = "SPEAKER_00"
MAX_CLUSTERED = 3000            # windows clustered (25 min of speech at a 0.5 s step): 36 MB of distances

_encoder = None
_encoder_lock = threading.Lock()


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str        # as faster-whisper gives it, with its leading blank


@dataclass(frozen=True)
class Figures:
    """The decoder's figures of a segment (payloads.DETAILS), for a task that asks for details."""

    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    temperature: float
    tokens: tuple[int, ...]
    seek: int


@dataclass(frozen=True)
class TimedSegment:
    """A transcribed segment with its words (word_timestamps=True) and the decoder's figures."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...]
    figures: Figures | None = None


@dataclass(frozen=True)
class Hints:
    """What the request said about the number of speakers (all optional)."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


@dataclass(frozen=True)
class Windows:
    """Embedding windows in time order: start (s), the stretch of speech each lies in, and the
    L2-normed embeddings; `step_s` is their spacing, `speech` the stretches (start, end);
    `for_names`, when known voices are matched with other audio than the clusters are made of
    (narrowband audio's telephone band: gateway/voiceprints.py), the embeddings of that."""

    starts: np.ndarray
    regions: np.ndarray
    embeddings: np.ndarray
    step_s: float
    speech: tuple[tuple[float, float], ...]
    for_names: np.ndarray | None = None

    @property
    def centres(self) -> np.ndarray:
        return self.starts + WINDOW_S / 2


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    label: int


@dataclass(frozen=True)
class Labelled:
    segments: tuple[Segment, ...]
    note: str | None = None      # why labelling could not be done, when it could not
    turns: tuple[SpeakerTurn, ...] = ()  # who spoke when, from the voice alone, named as the segments are


def load_encoder():
    """resemblyzer's VoiceEncoder (GE2E), loaded at most once per process.

    torch runs it on one thread: the LSTM is 480 small steps per batch, and with two threads
    on busy cores each step's hand-over cost more CPU time and made the time erratic (measured:
    docs/ARCHITECTURE.md, "One torch thread")."""
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            import torch
            with warnings.catch_warnings():  # webrtcvad (imported by resemblyzer) imports pkg_resources
                warnings.simplefilter("ignore")
                from resemblyzer import VoiceEncoder
            torch.set_num_threads(1)
            _encoder = VoiceEncoder("cpu", verbose=False).eval()
            warm_up = np.random.default_rng(0).uniform(-0.1, 0.1, 2 * SAMPLE_RATE).astype(np.float32)
            embed_windows(_encoder, warm_up, np.zeros(1))  # librosa compiles its numba code on first use
        return _encoder


# --- where the windows go ------------------------------------------------------------------


def speech_regions(audio: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of each stretch of speech, by faster-whisper's Silero VAD."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=300,
                                                    speech_pad_ms=round(SPEECH_PAD_S * 1000)))
    return [(c["start"] / SAMPLE_RATE, c["end"] / SAMPLE_RATE) for c in found]


def window_starts(regions: Sequence[tuple[float, float]], duration: float,
                  step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Starts of the windows and the index of the region each lies in: every `step_s` through
    each region, the last one flush with its end; a region shorter than a window gets one
    window centred on it (within the audio)."""
    starts: list[float] = []
    owners: list[int] = []
    for index, (begin, end) in enumerate(regions):
        if end - begin >= WINDOW_S:
            here = np.arange(begin, end - WINDOW_S, step_s).tolist() + [end - WINDOW_S]
        else:
            here = [min(max((begin + end - WINDOW_S) / 2, 0.0), duration - WINDOW_S)]
        starts += here
        owners += [index] * len(here)
    return np.round(np.asarray(starts, dtype=float), 2), np.asarray(owners, dtype=int)


def louder(audio: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """The audio raised to the loudness GE2E was trained at (never lowered; silence unchanged)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if rms == 0.0:
        return audio
    gain_db = target_dbfs - 20 * np.log10(rms)
    return audio * np.float32(10 ** (gain_db / 20)) if gain_db > 0 else audio


def embed_windows(encoder, audio: np.ndarray, starts: np.ndarray,
                  report: Callable[[float], None] = lambda f: None) -> np.ndarray:
    """The GE2E embedding of each window (rows L2-normed), from one mel spectrogram of the audio;
    `report(fraction of the windows done)` after each batch."""
    import torch
    from resemblyzer.audio import wav_to_mel_spectrogram

    mel = wav_to_mel_spectrogram(louder(audio))
    first = np.round(starts / FRAME_S).astype(int)
    mel = np.pad(mel, ((0, max(0, first.max(initial=0) + WINDOW_FRAMES - len(mel))), (0, 0)))
    out = []
    with torch.inference_mode():
        for i in range(0, len(first), BATCH):
            batch = np.stack([mel[f:f + WINDOW_FRAMES] for f in first[i:i + BATCH]])
            out.append(encoder(torch.from_numpy(batch)).numpy())
            report(min(i + BATCH, len(first)) / len(first))
    return np.concatenate(out) if out else np.zeros((0, 256), dtype=np.float32)


# --- who is who ----------------------------------------------------------------------------


def speaker_count(merge_distances: np.ndarray, threshold: float, hints: Hints, n: int) -> int:
    """Clusters to keep: the number asked for, else one more than the merges above the
    threshold, kept within min_speakers..max_speakers and the number of windows."""
    if hints.num_speakers:
        wanted = hints.num_speakers
    else:
        wanted = 1 + int(np.sum(merge_distances > threshold))
        wanted = max(wanted, hints.min_speakers or 1)
        wanted = min(wanted, hints.max_speakers or wanted)
    return max(1, min(wanted, n))


def cluster(embeddings: np.ndarray, threshold: float, hints: Hints = Hints(), min_windows: int = 1,
            regions: np.ndarray | None = None, short: bool = False) -> np.ndarray:
    """A cluster index per window: average-linkage agglomerative clustering on cosine distance
    (of at most MAX_CLUSTERED windows spread evenly through the audio, the others given to the
    nearest centre: the distances take memory as the square of the windows); then clusters that
    are not voices are dissolved (too few windows; mostly windows that straddle a change between
    two other voices, or that gather from the edges of turns near one voice, given the stretch
    of speech of each window), unless the hints need them;
    then each window moved to its nearest cluster centre.

    `short` audio (a few seconds of speech: a handful of windows, the middle ones straddling any
    change of speaker) is clustered by complete linkage, so two voices are told apart by the
    windows at either end, which hold one voice each, not by an average the mixed ones pull
    together; there a cluster stays when SHORT_APART from every other."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(embeddings)
    if n < 2:
        return np.zeros(n, dtype=int)
    sample = np.unique(np.linspace(0, n - 1, min(n, MAX_CLUSTERED)).round().astype(int))
    tree = linkage(embeddings[sample], method="complete" if short else "average", metric="cosine")
    k = speaker_count(tree[:, 2], threshold, hints, len(sample))
    labels = fcluster(tree, k, criterion="maxclust") - 1
    if len(sample) < n:  # every window to the nearest centre of the clusters found in the sample
        ids = np.unique(labels)
        labels = ids[np.argmax(embeddings @ centres_of(embeddings[sample], labels, ids).T, axis=1)]
    keep = min(k, hints.num_speakers or hints.min_speakers or 1)
    if short:   # in a few seconds of speech every cluster is small: only one close to another goes
        labels = absorb_small(embeddings, labels, n + 1, keep, SHORT_APART)
    else:
        labels = absorb_small(embeddings, labels, LONE_WINDOWS, keep)
        labels = absorb_small(embeddings, labels, min_windows, keep, SMALL_APART)
        labels = absorb_small(embeddings, labels, int(CLOSE_FACTOR * min_windows), keep, CLOSE_APART)
    if regions is not None:
        labels = dissolve_transitions(embeddings, labels, regions, keep)
        if not short:
            labels = dissolve_borders(embeddings, labels, regions, keep, int(BORDER_FACTOR * min_windows))
    return nearest_centre(embeddings, labels)


def centres_of(embeddings: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The L2-normed mean embedding of each cluster in `ids`, one row each."""
    centres = np.stack([embeddings[labels == i].mean(axis=0) for i in ids])
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def nearest_centre(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each window relabelled to the cluster whose centre is closest."""
    ids = np.unique(labels)
    return ids[np.argmax(embeddings @ centres_of(embeddings, labels, ids).T, axis=1)]


def nearest_apart(centres: np.ndarray) -> np.ndarray:
    """Each (L2-normed) centre's cosine distance to the nearest other centre."""
    return np.sort(1 - centres @ centres.T, axis=1)[:, 1]


def hand_over(embeddings: np.ndarray, labels: np.ndarray, gone: int) -> np.ndarray:
    """Cluster `gone` dissolved: each of its windows given to the nearest remaining cluster."""
    others = np.unique(labels[labels != gone])
    moving = labels == gone
    labels = labels.copy()
    labels[moving] = others[np.argmax(embeddings[moving] @ centres_of(embeddings, labels, others).T, axis=1)]
    return labels


def absorb_small(embeddings: np.ndarray, labels: np.ndarray, min_windows: int, keep: int,
                 apart: float = 2.0) -> np.ndarray:
    """The smallest cluster of fewer than `min_windows` windows whose centre lies within cosine
    distance `apart` of another cluster's dissolved, while more than `keep` clusters remain: a
    few odd windows (a cough, a laugh, a mixture at a change) are not a speaker, but a short
    turn of a voice unlike every other is (the second voice of a 5-second clip)."""
    while True:
        ids, sizes = np.unique(labels, return_counts=True)
        if len(ids) <= keep:
            return labels
        nearest = nearest_apart(centres_of(embeddings, labels, ids))
        small = np.flatnonzero((sizes < min_windows) & (nearest < apart))
        if not len(small):
            return labels
        labels = hand_over(embeddings, labels, ids[small[np.argmin(sizes[small])]])


def transition_windows(labels: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """True for each window in a run of at most TRANSITION_RUN windows of one cluster that lies,
    within one stretch of speech, between windows of two other, different clusters: the
    windows that straddle a quick change of speaker and hold a mixture of both voices."""
    out = np.zeros(len(labels), dtype=bool)
    first = 0
    while first < len(labels):
        last = first
        while last + 1 < len(labels) and labels[last + 1] == labels[first] and regions[last + 1] == regions[first]:
            last += 1
        inside = 0 < first and last + 1 < len(labels) and regions[first - 1] == regions[first] == regions[last + 1]
        if inside and last - first < TRANSITION_RUN and labels[first - 1] != labels[last + 1]:
            out[first:last + 1] = True
        first = last + 1
    return out


def dissolve_transitions(embeddings: np.ndarray, labels: np.ndarray, regions: np.ndarray, keep: int) -> np.ndarray:
    """The cluster with the largest share of transition windows dissolved while that share is at
    least TRANSITION_SHARE and more than `keep` clusters remain: a mixture of two voices is not
    a third voice."""
    while len(np.unique(labels)) > keep:
        ids = np.unique(labels)
        transitions = transition_windows(labels, regions)
        shares = np.array([transitions[labels == i].mean() for i in ids])
        if shares.max() < TRANSITION_SHARE:
            break
        labels = hand_over(embeddings, labels, ids[np.argmax(shares)])
    return labels


def border_windows(labels: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """True for each window next to a window of another cluster in the same stretch of speech."""
    same_stretch = regions[1:] == regions[:-1]
    change = same_stretch & (labels[1:] != labels[:-1])
    return np.r_[False, change] | np.r_[change, False]


def dissolve_borders(embeddings: np.ndarray, labels: np.ndarray, regions: np.ndarray, keep: int,
                     max_windows: int) -> np.ndarray:
    """The small cluster (fewer than `max_windows` windows) lying within BORDER_APART of another
    whose share of windows beside another voice in their stretch is largest dissolved, while
    that share is at least BORDER_SHARE and more than `keep` clusters remain: windows that
    straddle changes between several pairs of voices gather into a cluster near one of them,
    which transition_windows (a run between two other voices) does not catch."""
    while len(np.unique(labels)) > keep:
        ids, sizes = np.unique(labels, return_counts=True)
        borders = border_windows(labels, regions)
        shares = np.array([borders[labels == i].mean() for i in ids])
        nearest = nearest_apart(centres_of(embeddings, labels, ids))
        mixtures = np.flatnonzero((shares >= BORDER_SHARE) & (sizes < max_windows) & (nearest < BORDER_APART))
        if not len(mixtures):
            break
        labels = hand_over(embeddings, labels, ids[mixtures[np.argmax(shares[mixtures])]])
    return labels


def majority_filter(labels: np.ndarray, width: int = 3) -> np.ndarray:
    """Each label replaced by the most common one among its `width` neighbours (itself on ties)."""
    half = width // 2
    out = labels.copy()
    for i in range(len(labels)):
        near = labels[max(0, i - half):i + half + 1]
        values, counts = np.unique(near, return_counts=True)
        if counts.max() > np.sum(near == labels[i]):
            out[i] = values[np.argmax(counts)]
    return out


def smooth(labels: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """The majority filter within each stretch of speech: one window unlike both neighbours in
    continuous speech is a stray; a window alone in its own stretch (a short reply) stays."""
    out = labels.copy()
    for region in np.unique(regions):
        inside = regions == region
        out[inside] = majority_filter(labels[inside])
    return out


# --- words and segments --------------------------------------------------------------------


def speaker_turns(windows: Windows, labels: np.ndarray, bridge: float = BRIDGE_S,
                  pad: float = SPEECH_PAD_S) -> tuple[Turn, ...]:
    """Who spoke when: each stretch of speech, without the `pad` the VAD put around it (which
    transcription wants, but which is no one's speech), shared among its windows (each owns the
    time nearer its centre than its neighbours'), pieces of one label joined when no more than
    `bridge` seconds apart (a speaker's pause inside a turn is part of the turn)."""
    turns: list[Turn] = []
    centres = windows.centres
    for region, (begin, end) in enumerate(windows.speech):
        if end - begin > 4 * pad:
            begin, end = begin + pad, end - pad
        inside = np.flatnonzero(windows.regions == region)
        cuts = [begin, *((centres[inside[1:]] + centres[inside[:-1]]) / 2), end]
        for j, i in enumerate(inside):
            piece = Turn(float(cuts[j]), float(cuts[j + 1]), int(labels[i]))
            if turns and turns[-1].label == piece.label and turns[-1].end >= piece.start - bridge - 1e-6:
                turns[-1] = Turn(turns[-1].start, piece.end, piece.label)
            else:
                turns.append(piece)
    return tuple(turns)


def word_labels(words: Sequence[Word], turns: Sequence[Turn]) -> list[int]:
    """The label of the turn each word's middle falls in, or else of the nearest turn."""
    if not words or not turns:
        return [0] * len(words)
    starts = np.array([t.start for t in turns])
    ends = np.array([t.end for t in turns])
    middles = np.array([(w.start + w.end) / 2 for w in words])
    before = np.clip(np.searchsorted(starts, middles, side="right") - 1, 0, len(turns) - 1)
    after = np.clip(before + 1, 0, len(turns) - 1)
    gap_before = np.maximum(middles - ends[before], 0.0)   # 0 when the middle is inside
    gap_after = np.maximum(starts[after] - middles, 0.0)
    nearest = np.where(gap_before <= gap_after, before, after)
    return [turns[i].label for i in nearest]


def split_at_changes(segments: Sequence[TimedSegment], labels: Sequence[int]) -> list[tuple[Segment, int]]:
    """Each segment cut where the label of its words changes; (piece, label) in time order."""
    out: list[tuple[Segment, int]] = []
    at = 0
    for seg in segments:
        seg_labels = labels[at:at + len(seg.words)]
        at += len(seg.words)
        if not seg.words:
            out.append((piece(seg), out[-1][1] if out else 0))
            continue
        first = 0
        for i in range(1, len(seg.words) + 1):
            if i == len(seg.words) or seg_labels[i] != seg_labels[first]:
                words = seg.words[first:i]
                whole = first == 0 and i == len(seg.words)
                start = seg.start if first == 0 else words[0].start
                end = seg.end if i == len(seg.words) else words[-1].end
                text = seg.text if whole else "".join(w.text for w in words)
                out.append((piece(seg, words, start, end, text.strip()), seg_labels[first]))
                first = i
    return out


def trim_to_speech(pieces: Sequence[tuple[Segment, int]],
                   speech: Sequence[tuple[float, float]]) -> list[tuple[Segment, int]]:
    """Each piece's edges moved in to the first and last stretch of detected speech it overlaps
    (whisper's segment edges often reach into the pause around them); a piece overlapping no
    speech is left as it is."""
    begins = np.array([b for b, _ in speech])
    ends = np.array([e for _, e in speech])
    out = []
    for seg, label in pieces:
        first = int(np.searchsorted(ends, seg.start_time, side="right"))   # first stretch ending after the start
        last = int(np.searchsorted(begins, seg.end_time, side="left")) - 1   # last stretch beginning before the end
        if first <= last:
            start, end = max(seg.start_time, begins[first]), min(seg.end_time, ends[last])
            seg = replace(seg, start_time=float(start), end_time=float(end))
        out.append((seg, label))
    return out


def cover_turns(pieces: Sequence[tuple[Segment, int]], turns: Sequence[Turn]) -> list[tuple[Segment, int]]:
    """Each piece's span widened to the whole of the turns of its label that it overlaps
    (whisper's segments and words often begin late and end early), never into the span of the
    piece before it nor past the start of the piece after it."""
    out: list[tuple[Segment, int]] = []
    for k, (seg, label) in enumerate(pieces):
        start, end = seg.start_time, seg.end_time
        for turn in turns:
            if turn.label == label and turn.start < seg.end_time and turn.end > seg.start_time:
                start, end = min(start, turn.start), max(end, turn.end)
        floor = out[-1][0].end_time if out else 0.0
        ceiling = pieces[k + 1][0].start_time if k + 1 < len(pieces) else end
        start = min(seg.start_time, max(start, floor))     # widened, never narrowed
        end = max(seg.end_time, min(end, ceiling))
        out.append((replace(seg, start_time=float(start), end_time=float(end)), label))
    return out


def names_by_first_appearance(labels: Sequence[int], known: Mapping[int, str] | None = None) -> dict[int, str]:
    """SPEAKER_00 for the label heard first, SPEAKER_01 for the next new one, and so on; a label
    in `known` (a known speaker's) has that name instead, the others keep their numbers."""
    numbers: dict[int, str] = {}
    for label in labels:
        numbers.setdefault(label, f"SPEAKER_{len(numbers):02d}")
    return {label: (known or {}).get(label, name) for label, name in numbers.items()}


def named_turns(turns: Sequence[Turn], names: Mapping[int, str]) -> tuple[SpeakerTurn, ...]:
    """The timeline as a result gives it: each turn with its label's name."""
    return tuple(SpeakerTurn(t.start, t.end, names[t.label]) for t in turns)


def all_one_speaker(segments: Sequence[TimedSegment], note: str | None = None) -> Labelled:
    return Labelled(tuple(piece(s, speaker=SINGLE) for s in segments), note)


def piece(seg: TimedSegment, words: Sequence[Word] | None = None, start: float | None = None,
          end: float | None = None, text: str | None = None, speaker: str | None = None) -> Segment:
    """`seg` as a result's segment (or the piece of it with `words`, from `start` to `end`,
    saying `text`), with its words and the decoder's figures, which the payload sends to the
    tasks that ask for them."""
    figures = {} if seg.figures is None else asdict(seg.figures)
    return Segment(seg.start if start is None else start, seg.end if end is None else end,
                   seg.text if text is None else text, speaker,
                   tuple(PayloadWord(w.text, w.start, w.end) for w in (seg.words if words is None else words)),
                   **figures)


# --- the whole pipeline --------------------------------------------------------------------


def embed_block(encoder, audio: np.ndarray, offset: float, regions: Sequence[tuple[float, float]],
                step_s: float, report: Callable[[float], None] = lambda f: None,
                for_names: np.ndarray | None = None) -> Windows:
    """The embedded windows of one block of the audio, which begins `offset` seconds into the
    file (times are the file's), given the block's `speech_regions` (its own times); none when
    it is shorter than a window or holds no speech. `report` as embed_windows. With `for_names`
    (the block's audio as known voices are matched), the same windows of it too."""
    duration = len(audio) / SAMPLE_RATE
    if duration < WINDOW_S or not regions:
        none = np.zeros((0, 256), np.float32)
        return Windows(np.zeros(0), np.zeros(0, dtype=int), none, step_s, (),
                       None if for_names is None else none)
    starts, owners = window_starts(regions, duration, step_s)
    if for_names is None:
        embedded, named = embed_windows(encoder, audio, starts, report), None
    else:  # each half of the work reports half the progress
        embedded = embed_windows(encoder, audio, starts, lambda f: report(f / 2))
        named = embed_windows(encoder, for_names, starts, lambda f: report(0.5 + f / 2))
    return Windows(starts + offset, owners, embedded, step_s,
                   tuple((begin + offset, end + offset) for begin, end in regions), named)


def joined(parts: Sequence[Windows], duration: float) -> Windows | str:
    """The windows of consecutive blocks as one Windows (stretches numbered through the file),
    or the reason there can be none for audio of `duration` seconds."""
    if duration < WINDOW_S:
        return f"the audio ({duration:.1f} s) is shorter than the {WINDOW_S:.1f} s embedding window"
    speech = tuple(region for part in parts for region in part.speech)
    if not speech:
        return "no speech was found"
    if sum(end - begin for begin, end in speech) < WINDOW_S:
        return f"there is less speech than the {WINDOW_S:.1f} s embedding window"
    before = np.cumsum([0] + [len(part.speech) for part in parts[:-1]])
    for_names = [part.for_names for part in parts]
    return Windows(np.concatenate([part.starts for part in parts]),
                   np.concatenate([part.regions + first for part, first in zip(parts, before)]),
                   np.concatenate([part.embeddings for part in parts]), parts[0].step_s, speech,
                   None if any(f is None for f in for_names) else np.concatenate(for_names))


def find_windows(encoder, audio: np.ndarray, step_s: float,
                 report: Callable[[float], None] = lambda f: None) -> Windows | str:
    """The embedded windows of the whole audio (one block), or the reason there can be none."""
    return joined([embed_block(encoder, audio, 0.0, speech_regions(audio), step_s, report)],
                  len(audio) / SAMPLE_RATE)


def shifted(segments: Sequence[TimedSegment], offset: float) -> list[TimedSegment]:
    """Segments transcribed from a block beginning `offset` seconds into the file, in the file's times."""
    if not offset:
        return list(segments)
    return [TimedSegment(s.start + offset, s.end + offset, s.text,
                         tuple(Word(w.start + offset, w.end + offset, w.text) for w in s.words), s.figures)
            for s in segments]


Namer = Callable[[Mapping[int, np.ndarray]], Mapping[int, str]]  # cluster centres -> the known ones' names


def label_with_windows(segments: Sequence[TimedSegment], windows: Windows, threshold: float,
                       hints: Hints = Hints(), known: Namer | None = None) -> Labelled:
    """Label the segments from embedded windows (the cheap, deterministic half of the pipeline);
    `known` names the clusters whose voices are known speakers' (gateway/voiceprints.py)."""
    min_windows = int(np.ceil(MIN_SPEAKER_S / windows.step_s))
    short = sum(end - begin for begin, end in windows.speech) <= SHORT_SPEECH_S
    labels = cluster(windows.embeddings, threshold, hints, min_windows, windows.regions, short)
    labels = smooth(labels, windows.regions)
    turns = speaker_turns(windows, labels)
    by_word = word_labels([w for s in segments for w in s.words], turns)
    pieces = cover_turns(trim_to_speech(split_at_changes(segments, by_word), windows.speech), turns)
    ids = np.unique(labels)
    named_by = windows.embeddings if windows.for_names is None else windows.for_names
    known_names = known(dict(zip(ids.tolist(), centres_of(named_by, labels, ids)))) if known else None
    # numbered as the transcript shows them; a voice heard only where nothing was transcribed after
    names = names_by_first_appearance([label for _, label in pieces] + [t.label for t in turns], known_names)
    return Labelled(tuple(replace(seg, speaker=names[label]) for seg, label in pieces),
                    turns=named_turns(turns, names))


def label_speakers(segments: Sequence[TimedSegment], parts: Sequence[Windows], duration: float, *,
                   threshold: float, hints: Hints = Hints(), known: Namer | None = None) -> Labelled:
    """Speaker-labelled segments from the embedded windows of every block (`embed_block`) of
    audio of `duration` seconds, and the speaker turns (also where nothing was transcribed); when
    labelling cannot be done, all SPEAKER_00 and a note why."""
    windows = joined(parts, duration)
    if isinstance(windows, str):
        if not segments:
            return Labelled((), "speaker labelling skipped: no speech was transcribed")
        return all_one_speaker(segments, f"speaker labelling skipped: {windows}; all segments are {SINGLE}")
    return label_with_windows(segments, windows, threshold, hints, known)
