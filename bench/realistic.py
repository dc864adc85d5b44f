"""Realistic-speech development set for speaker labelling: espeak-ng voices varied in pitch,
rate and formants, passed through what recordings do to speech, in conversations shaped like
real ones (short turns and backchannels, sentences finished by the other speaker, overlaps,
5-second two-voice clips, long monologues, 2-5 speakers).

Everything is generated from a seed (no audio is checked in) and cached under
bench/.cache/realistic/ (the rendered utterances) and the `out_dir` given (the clips).
Plain functions, no import of the gateway: another bench may copy or import this file.

    VOICES       the voices: espeak-ng voice+variant, pitch, rate, and a formant (vocal-tract
                 length) factor applied by resampling with the duration kept
    CONDITIONS   the recording conditions:
                   clean        the voices as rendered, at different levels
                   telephone    300-3,400 Hz band, 8 kHz, G.711 mu-law
                   noisy        pink noise (and hum) at 5-20 dB SNR
                   reverb       a room (sox reverb, 40-90 % reverberance)
                   codec        opus 8-16 kbit/s or mp3 16-32 kbit/s
                   phone_noisy  noise at 8-20 dB SNR, then a GSM telephone line
    KINDS        the shapes of conversation (see `conversation`)

    utterance(voice, text, condition, out, seed=0) -> Path
    conversation(seed, n_speakers, condition, out_dir, kind="dialogue") -> Clip

The reference turns of a clip are the spans of each utterance's sound (leading and trailing
silence of the rendering cut, before any reverb or noise), as a person marking turns would.

Needs espeak-ng, sox and ffmpeg (with libopus, libmp3lame, libgsm) on the PATH.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "realistic"
RATE = 16000
FFMPEG = ("ffmpeg", "-y", "-loglevel", "error", "-i")
VERSION = 2        # part of every cache key: bump when the generation changes


@dataclass(frozen=True)
class Voice:
    """One talker: espeak-ng's `voice` (language+variant), `pitch` (0-99), `speed` (words per
    minute), and `formant`: the factor by which the whole spectrum (formants and pitch) is
    raised by resampling, the duration restored (a shorter vocal tract above 1)."""

    name: str
    voice: str
    pitch: int
    speed: int
    formant: float = 1.0


VOICES: tuple[Voice, ...] = (     # chosen among 99 variants so that no two are closer than 0.24 in
    Voice("ann", "en-gb-x-gbclan+steph", 41, 173, 0.88),     # GE2E cosine distance (median 0.42; a
    Voice("ben", "en-gb-scotland+klatt2", 47, 179, 0.88),    # voice's windows lie 0.05-0.09 from its
    Voice("cleo", "en-029+zac", 52, 169, 1.12),              # centre): distinct voices, as people are
    Voice("dev", "en-gb-scotland+iven", 31, 157, 1.12),
    Voice("ezra", "en-gb-scotland+f5", 59, 151, 1.0),
    Voice("fern", "en+boris", 67, 173, 0.88),
    Voice("gus", "en-gb-x-rp+iven", 56, 164, 0.88),
    Voice("hal", "en-gb-scotland+m8", 34, 166, 0.88),
    Voice("iris", "en-gb-x-gbclan+f3", 30, 173, 1.12),
    Voice("jon", "en-us+klatt3", 68, 179, 1.12),
    Voice("kai", "en+steph", 63, 155, 1.12),
    Voice("lou", "en-us+m8", 68, 166, 1.12),
    Voice("max", "en-gb-x-gbclan+m1", 63, 146, 1.0),
    Voice("nina", "en-gb-scotland+michel", 48, 166, 1.0),
    Voice("otto", "en-us-nyc+david", 32, 175, 0.88),
    Voice("pia", "en-us-nyc+belinda", 66, 153, 1.0),
)

CONDITIONS: tuple[str, ...] = ("clean", "telephone", "noisy", "reverb", "codec", "phone_noisy")
KINDS: tuple[str, ...] = ("dialogue", "backchannel", "overlap", "short", "monologue")

SENTENCES = """
I was thinking we could meet on Thursday after lunch if that works for you.
The train was late again this morning so I missed the first half of the meeting.
Did you get the message I sent you about the new schedule?
We should probably ask the landlord before we paint the kitchen.
My sister is coming to visit next week with her two children.
The report is nearly finished but I still need the figures from accounting.
I think the restaurant on the corner closes at ten on weekdays.
Could you send me the address again, I seem to have lost it.
The weather has been strange this year, warm one day and freezing the next.
They want the whole thing done by the end of the month, which is not realistic.
I called the bank twice and nobody could tell me what had happened to the payment.
We drove up to the lake on Saturday and the water was still very cold.
Honestly I do not mind where we go, as long as there is somewhere to park.
The doctor said it was nothing serious and that I should rest for a few days.
Our neighbours have a new dog that barks every time someone walks past.
If we leave at seven we should miss most of the traffic on the bridge.
I have been reading a book about the history of the old canal.
The printer on the second floor is broken again, so use the one downstairs.
She told me the tickets were sold out, but I found two on the website.
We need to decide soon, because the prices go up after the first of June.
He has worked there for almost twenty years and never taken a sick day.
The kids want pizza tonight, but I was hoping for something healthier.
I am not sure the software update fixed the problem with the login page.
Let me check my calendar and I will get back to you this afternoon.
The garden looks lovely now that the roses are finally in bloom.
Can you remind me what time the plumber said he would come?
""".strip().splitlines()

BACKCHANNELS = ("yes", "mm-hm", "hello?", "right", "okay", "yeah", "uh-huh", "I see",
                "really?", "sure", "no", "exactly", "oh", "wait", "thanks")
SHORT_REPLIES = ("yes, that's fine", "no, not really", "I don't know", "sounds good",
                 "what do you mean?", "oh, really?", "sorry, say again?", "of course",
                 "not yet", "me too", "good idea", "hang on")


@dataclass(frozen=True)
class Clip:
    path: Path
    turns: list[tuple[float, float, str]]   # reference (start, end, speaker name), by start
    text: str                               # what is said, turns in order of start
    kind: str = "dialogue"
    condition: str = "clean"
    speakers: tuple[str, ...] = field(default=())   # the voices' names, in order of first turn

    @property
    def duration(self) -> float:
        with wave.open(str(self.path)) as w:
            return w.getnframes() / w.getframerate()


# --- audio files ---------------------------------------------------------------------------


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit mono WAV as float32 in [-1, 1]."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, path
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def write_wav(path: Path, audio: np.ndarray, rate: int = RATE) -> None:
    """16-bit mono WAV, written to a partial file first so that only a whole file lands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with wave.open(str(partial), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    partial.replace(path)


def run(*command: str) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def through(audio: np.ndarray, *steps: tuple[str, ...]) -> np.ndarray:
    """`audio` (16 kHz) through a chain of commands, each `(suffix of its output file, program,
    args...)` with `{i}` and `{o}` for its input and output file; back as 16 kHz, cut or padded
    to its length."""
    with tempfile.TemporaryDirectory(prefix="realistic-") as tmp:
        current = Path(tmp) / "0.wav"
        write_wav(current, audio)
        for n, (suffix, *command) in enumerate(steps, 1):
            out = Path(tmp) / f"{n}{suffix}"
            run(*(a.format(i=current, o=out) for a in command))
            current = out
        final = Path(tmp) / "final.wav"
        run("sox", str(current), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(final))
        back = read_wav(final)
    return np.pad(back, (0, max(0, len(audio) - len(back))))[:len(audio)]


# --- voices --------------------------------------------------------------------------------


def render(voice: Voice, text: str) -> np.ndarray:
    """`voice` saying `text`, dry, 16 kHz, leading and trailing silence cut; cached."""
    key = hashlib.sha1(f"{VERSION}|{voice}|{text}".encode()).hexdigest()[:16]
    path = CACHE / "voice" / f"{key}.wav"
    if not path.exists():
        with tempfile.TemporaryDirectory(prefix="realistic-") as tmp:
            raw = Path(tmp) / "raw.wav"
            run("espeak-ng", "-v", voice.voice, "-p", str(voice.pitch), "-s", str(voice.speed),
                "-w", str(raw), text)
            out = Path(tmp) / "out.wav"
            warp = [] if voice.formant == 1.0 else ["speed", f"{voice.formant:.4f}",
                                                     "tempo", "-s", f"{1 / voice.formant:.4f}"]
            run("sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer",
                str(out), *warp, "rate", str(RATE))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_wav(path, read_wav(out))
    audio = read_wav(path)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0]:loud[-1] + 1] if len(loud) else audio[:0]


# --- conditions ----------------------------------------------------------------------------


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise with a 1/f spectrum (and, at random, a mains hum), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n)
    if rng.random() < 0.5:
        noise += 0.3 * np.std(noise) * np.sin(2 * np.pi * 50 * np.arange(n) / RATE)
    return (noise / (np.std(noise) or 1.0)).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Noise added at `snr_db` below the level of the speech (samples louder than -50 dBFS)."""
    speech = audio[np.abs(audio) > 10 ** (-50 / 20)]
    level = float(np.sqrt(np.mean(np.square(speech)))) if len(speech) else 0.01
    return audio + pink_noise(rng, len(audio)) * np.float32(level / 10 ** (snr_db / 20))


def telephone(audio: np.ndarray, codec: str = "mulaw") -> np.ndarray:
    """300-3,400 Hz at 8 kHz, through G.711 mu-law or GSM 06.10."""
    band = (".wav", "sox", "{i}", "-r", "8000", "{o}", "sinc", "300-3400")
    if codec == "gsm":
        return through(audio, band, (".gsm", *FFMPEG, "{i}", "-ar", "8000", "-c:a", "libgsm", "-f", "gsm", "{o}"),
                       (".wav", "ffmpeg", "-y", "-loglevel", "error", "-f", "gsm", "-ar", "8000", "-i", "{i}", "{o}"))
    return through(audio, band, (".wav", "sox", "{i}", "-e", "u-law", "-b", "8", "{o}"))


def degrade(audio: np.ndarray, condition: str, seed: int) -> np.ndarray:
    """`audio` (16 kHz) as recorded in `condition`; the random choices are the seed's."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; one of {', '.join(CONDITIONS)}")
    rng = np.random.default_rng([seed, CONDITIONS.index(condition)])
    if condition == "clean":
        return audio
    if condition == "telephone":
        return telephone(audio)
    if condition == "noisy":
        return add_noise(audio, rng.uniform(5, 20), rng)
    if condition == "reverb":
        reverberance, room, delay = rng.uniform(40, 90), rng.uniform(50, 100), rng.uniform(0, 20)
        return through(audio, (".wav", "sox", "{i}", "{o}", "reverb", f"{reverberance:.0f}", "50",
                               f"{room:.0f}", "100", f"{delay:.0f}", "channels", "1"))
    if condition == "codec":
        if rng.random() < 0.5:
            kbps = int(rng.choice([8, 12, 16]))
            encode = (".ogg", *FFMPEG, "{i}", "-c:a", "libopus", "-b:a", f"{kbps}k", "{o}")
        else:
            kbps = int(rng.choice([16, 24, 32]))
            encode = (".mp3", *FFMPEG, "{i}", "-c:a", "libmp3lame", "-b:a", f"{kbps}k", "{o}")
        return through(audio, encode, (".wav", *FFMPEG, "{i}", "-ar", str(RATE), "{o}"))
    return telephone(add_noise(audio, rng.uniform(8, 20), rng), codec="gsm")   # phone_noisy


def utterance(voice: Voice, text: str, condition: str, out: Path, seed: int = 0) -> Path:
    """`voice` saying `text` with 0.3 s of silence either side, degraded by `condition`,
    written as 16 kHz mono WAV at `out`."""
    pad = np.zeros(int(0.3 * RATE), np.float32)
    audio = np.concatenate([pad, render(voice, text) * np.float32(0.5), pad])
    write_wav(Path(out), degrade(audio, condition, seed))
    return Path(out)


# --- conversations -------------------------------------------------------------------------


def sentence(rng: random.Random) -> str:
    return rng.choice(SENTENCES)


def halves(text: str, rng: random.Random) -> tuple[str, str]:
    """A sentence cut in two at a word, for one speaker to begin and the other to finish."""
    words = text.split()
    at = rng.randint(3, len(words) - 3)
    return " ".join(words[:at]), " ".join(words[at:])


@dataclass
class Plan:
    """A turn to be placed: who says what, and how it follows the previous turn."""

    speaker: int
    text: str
    follow: str    # "pause", "quick", "overlap" (starts before the previous turn ends), "under" (a
                   # backchannel inside the previous turn)


def plan_turns(rng: random.Random, n_speakers: int, kind: str) -> list[Plan]:
    """The turns of a conversation of `kind`:
       dialogue     sentences, short replies (1-3 words), backchannels, sentences split between
                    speakers, a few overlaps; about 14 turns for two speakers, more for more
       backchannel  mostly short replies and backchannels, some over the other's speech
       overlap      sentences, a third of them starting before the previous one ends
       short        the 5-second clip: two voices (or, asked for one, one voice), about 2 s each
       monologue    one voice, 10-14 sentences, pauses between some"""
    if kind == "monologue":
        return [Plan(0, " ".join(sentence(rng) for _ in range(rng.randint(1, 2))), "pause")
                for _ in range(rng.randint(8, 11))]
    if kind == "short":
        first, second = rng.sample(SENTENCES, 2)
        return [Plan(0, " ".join(first.split()[:rng.randint(5, 7)]), "pause"),
                Plan(1 % n_speakers, " ".join(second.split()[:rng.randint(5, 7)]), rng.choice(["pause", "quick"]))]
    n_turns = {"dialogue": 10 + 4 * n_speakers, "backchannel": 12 + 4 * n_speakers,
               "overlap": 8 + 3 * n_speakers}[kind]
    order = list(range(n_speakers))          # everyone speaks early on
    rng.shuffle(order)
    while len(order) < n_turns:
        order.append(rng.choice([s for s in range(n_speakers) if s != order[-1]]))
    plans: list[Plan] = []
    for speaker in order:
        r = rng.random()
        if kind == "overlap":
            plans.append(Plan(speaker, sentence(rng), "overlap" if r < 0.35 else rng.choice(["pause", "quick"])))
        elif kind == "backchannel":
            if r < 0.3 and plans:
                plans.append(Plan(speaker, rng.choice(BACKCHANNELS), "under" if rng.random() < 0.4 else "quick"))
            elif r < 0.6:
                plans.append(Plan(speaker, rng.choice(SHORT_REPLIES), rng.choice(["pause", "quick"])))
            else:
                plans.append(Plan(speaker, sentence(rng), rng.choice(["pause", "quick"])))
        else:   # dialogue
            if r < 0.12 and plans:
                plans.append(Plan(speaker, rng.choice(BACKCHANNELS), rng.choice(["under", "quick", "pause"])))
            elif r < 0.3:
                plans.append(Plan(speaker, rng.choice(SHORT_REPLIES), rng.choice(["pause", "quick"])))
            elif r < 0.4 and plans and plans[-1].follow != "under":
                begin, end = halves(sentence(rng), rng)     # the previous speaker starts, this one finishes
                plans.append(Plan(plans[-1].speaker, begin, rng.choice(["pause", "quick"])))
                plans.append(Plan(speaker, end, "quick"))
            else:
                follow = "overlap" if rng.random() < 0.1 else rng.choice(["pause", "pause", "quick"])
                plans.append(Plan(speaker, sentence(rng), follow))
    return plans


def place(plans: list[Plan], voices: list[Voice], rng: random.Random) -> tuple[np.ndarray, list]:
    """The turns rendered and laid on one track (overlaps added), each speaker at a level of
    their own and each turn within 2 dB of it; (audio, [(start, end, name, text)])."""
    gains = [10 ** (rng.uniform(-8, 0) / 20) for _ in voices]
    laid: list[tuple[int, np.ndarray, float, str, str]] = []
    at, previous = 0.5, None            # previous: (start, end) of the last turn placed
    for plan in plans:
        audio = render(voices[plan.speaker], plan.text)
        audio = audio * np.float32(gains[plan.speaker] * 10 ** (rng.uniform(-2, 2) / 20))
        length = len(audio) / RATE
        if previous is None:
            start = at
        elif plan.follow == "pause":
            start = previous[1] + rng.uniform(0.3, 1.2)
        elif plan.follow == "quick":
            start = previous[1] + rng.uniform(0.0, 0.15)
        elif plan.follow == "overlap":
            start = max(previous[0] + 0.3, previous[1] - rng.uniform(0.2, 0.8))
        else:   # under: inside the previous turn, when it is long enough, else just after it
            room = previous[1] - previous[0] - length - 0.4
            start = previous[0] + 0.2 + rng.uniform(0, room) if room > 0 else previous[1] + rng.uniform(0.0, 0.2)
        laid.append((int(round(start * RATE)), audio, start, voices[plan.speaker].name, plan.text))
        if plan.follow != "under" or previous is None or start + length > previous[1]:
            previous = (start, start + length)    # a backchannel under a turn does not end it
    total = max(first + len(audio) for first, audio, *_ in laid) + int(0.5 * RATE)
    track = np.zeros(total, np.float32)
    for first, audio, *_ in laid:
        track[first:first + len(audio)] += audio
    turns = sorted((round(start, 3), round(start + len(audio) / RATE, 3), name, text)
                   for _, audio, start, name, text in laid)
    return track, turns


def conversation(seed: int, n_speakers: int, condition: str, out_dir: Path, kind: str = "dialogue") -> Clip:
    """A clip of `kind` (KINDS) with `n_speakers` voices (1 for a monologue whatever is asked; 1 or
    2 for the 5-second clip), recorded in `condition`, written to `out_dir` with its reference
    turns beside it (JSON and RTTM); cached there, so a second call reads it back."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; one of {', '.join(CONDITIONS)}")
    n_speakers = 1 if kind == "monologue" else n_speakers
    most = 2 if kind == "short" else len(VOICES)
    least = 1 if kind == "short" else 2
    if not least <= n_speakers <= most and kind != "monologue":
        raise ValueError(f"{kind} needs {least} to {most} speakers, not {n_speakers}")
    out_dir = Path(out_dir)
    name = f"{kind}-{n_speakers}spk-{condition}-{seed}"
    wav, meta = out_dir / f"{name}.wav", out_dir / f"{name}.json"
    if wav.exists() and meta.exists():
        saved = json.loads(meta.read_text())
        if saved.get("version") == VERSION:
            return Clip(wav, [tuple(t) for t in saved["turns"]], saved["text"], kind, condition,
                        tuple(saved["speakers"]))
    rng = random.Random(f"{seed}|{n_speakers}|{kind}")     # the same conversation in every condition
    voices = rng.sample(VOICES, n_speakers)
    track, turns = place(plan_turns(rng, n_speakers, kind), voices, rng)
    level = 10 ** (rng.uniform(-32, -18) / 20) / max(float(np.sqrt(np.mean(np.square(track)))), 1e-6)
    audio = degrade(track * np.float32(level), condition, seed)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    write_wav(wav, audio / peak * 0.95 if peak > 0.95 else audio)
    heard = list(dict.fromkeys(name_ for _, _, name_, _ in turns))
    reference = [(s, e, who) for s, e, who, _ in turns]
    text = " ".join(t for *_, t in turns)
    meta.write_text(json.dumps({"version": VERSION, "turns": reference, "text": text, "speakers": heard,
                                "kind": kind, "condition": condition, "seed": seed}, indent=1) + "\n")
    (out_dir / f"{name}.rttm").write_text("".join(
        f"SPEAKER {name} 1 {s:.3f} {e - s:.3f} <NA> <NA> {who} <NA> <NA>\n" for s, e, who in reference))
    return Clip(wav, reference, text, kind, condition, tuple(heard))


if __name__ == "__main__":      # a sample of each kind and condition, for listening
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else CACHE / "sample"
    for c in CONDITIONS:
        for k, n in (("dialogue", 2), ("backchannel", 3), ("overlap", 2), ("short", 2), ("monologue", 1)):
            clip = conversation(0, n, c, target, k)
            print(f"{clip.path}  {clip.duration:5.1f} s  {len(clip.turns)} turns  {', '.join(clip.speakers)}")
