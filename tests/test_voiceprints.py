"""Known voices matched to a task's clusters (gateway/voiceprints.py): the open-set decision, the
telephone band's voiceprints for narrowband audio; narrowband detection; what an enrolment keeps."""
from __future__ import annotations

import numpy as np
import pytest

from gateway import voiceprints
from gateway.audio import SAMPLE_RATE
from gateway.voiceprints import DIMENSIONS, KnownVoice, match

WIDE, NARROW = 0.80, 0.90  # the thresholds of the tests below


def axis(i: int) -> np.ndarray:
    v = np.zeros(DIMENSIONS, np.float32)
    v[i] = 1.0
    return v


def at(similarity: float, to: int, away: int = 200) -> np.ndarray:
    """A unit vector `similarity` alike to axis `to` (the rest along axis `away`)."""
    return (similarity * axis(to) + np.sqrt(1 - similarity ** 2) * axis(away)).astype(np.float32)


def test_a_cluster_is_named_only_at_the_threshold_or_above():
    ann = KnownVoice("Ann", axis(0))
    assert match({0: (at(0.81, 0))}, [ann], WIDE, NARROW) == {0: "Ann"}
    assert match({0: (at(0.79, 0))}, [ann], WIDE, NARROW) == {}


def test_the_closest_of_a_names_voiceprints_counts():
    """An enrolment keeps several (as given, with noise, with echo), and a name may be enrolled twice."""
    ann = KnownVoice("Ann", np.stack([axis(1), axis(0), axis(2)]))
    assert match({0: (at(0.85, 0))}, [ann], WIDE, NARROW) == {0: "Ann"}
    twice = [KnownVoice("Bo", axis(3)), KnownVoice("Bo", axis(0))]
    assert match({0: (at(0.85, 0))}, twice, WIDE, NARROW) == {0: "Bo"}


def test_narrowband_audio_is_matched_with_the_telephone_bands_voiceprints_at_their_threshold():
    ann = KnownVoice("Ann", axis(0), narrowband=axis(1))
    # wideband audio: the voiceprints of the audio as given
    assert match({0: (at(0.85, 0))}, [ann], WIDE, NARROW) == {0: "Ann"}
    assert match({0: (at(0.95, 1))}, [ann], WIDE, NARROW) == {}
    # narrowband: the telephone band's only, at NARROW (voices on one narrow band are more alike)
    assert match({0: (at(0.95, 1))}, [ann], WIDE, NARROW, narrow=True) == {0: "Ann"}
    assert match({0: (at(0.85, 1))}, [ann], WIDE, NARROW, narrow=True) == {}
    assert match({0: (at(0.99, 0))}, [ann], WIDE, NARROW, narrow=True) == {}
    # a voice enrolled before there were telephone-band voiceprints: its own, at WIDE
    old = KnownVoice("Old", axis(0))
    assert match({0: (at(0.85, 0))}, [old], WIDE, NARROW, narrow=True) == {0: "Old"}


def test_one_to_one_the_clearest_pair_first():
    """Two clusters near Ann: the closer takes the name; each name once, each cluster once."""
    ann, bo = KnownVoice("Ann", axis(0)), KnownVoice("Bo", axis(1))
    clusters = {0: at(0.84, 0), 1: at(0.86, 0, away=201), 2: at(0.9, 1)}
    assert match(clusters, [ann, bo], WIDE, NARROW) == {1: "Ann", 2: "Bo"}
    # on narrowband audio a voice with a telephone-band voiceprint is judged against NARROW, one
    # without against WIDE: the pair further above its own threshold is decided first
    band_ann = KnownVoice("Ann", axis(5), narrowband=axis(0))
    old_bo = KnownVoice("Bo", axis(0))
    assert match({0: at(0.93, 0)}, [band_ann, old_bo], WIDE, NARROW, narrow=True) == {0: "Bo"}  # 0.13 > 0.03


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32) * 0.1


def test_narrowband_detection():
    wide = noise(3.0)
    assert not voiceprints.narrowband(*voiceprints.band_energies(wide))
    assert voiceprints.narrowband(*voiceprints.band_energies(voiceprints.band_limited(wide)))
    # summed over a file's blocks: a wideband block makes the file wideband
    blocks = [voiceprints.band_energies(voiceprints.band_limited(noise(2.0, seed))) for seed in (1, 2)]
    assert voiceprints.narrowband(*map(sum, zip(*blocks)))
    assert not voiceprints.narrowband(*map(sum, zip(*blocks, voiceprints.band_energies(noise(1.0)))))
    assert not voiceprints.narrowband(*voiceprints.band_energies(np.zeros(SAMPLE_RATE, np.float32)))  # silence
    assert voiceprints.band_energies(np.zeros(100, np.float32)) == (0.0, 0.0)  # under a frame


def test_the_conditions_an_enrolment_is_also_heard_in():
    audio = noise(2.0)
    rng = np.random.default_rng(0)
    noisy = voiceprints.noisy(audio, rng)
    level = float(np.sqrt(np.mean(np.square(audio))))
    added = float(np.sqrt(np.mean(np.square(noisy - audio))))
    assert 20 * np.log10(level / added) == pytest.approx(voiceprints.NOISE_SNR_DB, abs=0.5)
    echo = voiceprints.reverberant(audio, rng)
    assert echo.shape == audio.shape and float(np.max(np.abs(echo))) == pytest.approx(float(np.max(np.abs(audio))))
    spectrum = np.abs(np.fft.rfft(voiceprints.band_limited(audio)))
    hz = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    assert spectrum[(hz < 299) | (hz > 3401)].max() < 1e-3 < spectrum[(hz > 301) & (hz < 3399)].min()


def test_voiceprints_as_bytes():
    one, three = axis(0), np.stack([axis(0), axis(1), axis(2)])
    assert voiceprints.from_bytes(voiceprints.to_bytes(one)).shape == (DIMENSIONS,)
    assert np.array_equal(voiceprints.from_bytes(voiceprints.to_bytes(three)), three)
    assert np.array_equal(voiceprints.from_text(voiceprints.to_text(three)), three)
