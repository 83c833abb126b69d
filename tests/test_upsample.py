"""The low-delay upsampler (instrument/upsample.py) and the stream restart of instrument/sources.py's Resampler."""
from __future__ import annotations

import numpy as np
import soxr

from instrument.sources import Resampler
from instrument.upsample import PolyphaseUpsampler, design


def test_filter_response_passband_flat_images_suppressed():
    h = design(3)
    H = np.abs(np.fft.rfft(h, 1 << 16))
    f = np.fft.rfftfreq(1 << 16, 1 / 48000)
    db = 20 * np.log10(H / H[0] + 1e-15)
    assert np.abs(db[f <= 7000]).max() < 0.05  # flat to 7 kHz of a 16 kHz model's 8
    assert db[f >= 8800].max() < -85  # images of what lies below 7.2 kHz
    assert abs(H[0] - 3) < 1e-9  # unity gain after zero-stuffing


def test_streaming_equals_one_shot_and_matches_soxr_on_a_sine():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 2)).astype(np.float32)
    whole = PolyphaseUpsampler(3, 2).process(x)
    up = PolyphaseUpsampler(3, 2)
    parts = np.concatenate([up.process(x[i:i + n]) for i, n in zip(np.cumsum([0, 7, 1, 300, 43]), [7, 1, 300, 43, 3649])])
    assert parts.shape == (12000, 2) and np.allclose(parts, whole, atol=1e-5)
    # A 1 kHz tone comes out as the same tone soxr makes, delayed by the filter's 95.5 frames (2 ms at 48 kHz).
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[:, None]
    y = PolyphaseUpsampler(3, 1).process(tone)[:, 0]
    ref = soxr.resample(tone, 16000, 48000, quality="VHQ")[:, 0]
    d = PolyphaseUpsampler(3, 1).delay_frames
    assert d == 95.5
    # compare away from the edges, after removing the (half-sample) delay by interpolation
    idx = np.arange(2000, 40000)
    shifted = np.interp(idx + d, np.arange(len(y)), y)
    assert np.sqrt(np.mean((shifted - ref[idx]) ** 2)) < 1e-3


class Tone:
    """A model-rate source: a sine whose frequency says which stream made it (the old 440 Hz, the new 660 Hz)."""
    sample_rate, channels = 16000, 1

    def __init__(self, freq):
        self.freq, self.pos = freq, 0

    def restart(self, freq):
        self.freq, self.pos = freq, 0

    def render(self, n):
        t = (self.pos + np.arange(n)) / self.sample_rate
        self.pos += n
        return (0.5 * np.sin(2 * np.pi * self.freq * t)).astype(np.float32)[:, None]


def _level_at(y, freq, rate):
    t = np.arange(len(y)) / rate
    return 2 * abs(np.mean(y * np.exp(-2j * np.pi * freq * t)))


def test_restart_drops_the_old_stream_after_a_short_crossfade():
    for rate in (48000, 44100):  # the polyphase path and the soxr path (non-integer ratio)
        src = Tone(440)
        rs = Resampler(src, rate, 2)
        rs.read(1000)
        assert len(rs._fifo) > 0  # the old stream is buffered ahead
        rs.restart()
        src.restart(660)  # the source restarts (its model was reset)
        y = rs.read(9600)[:, 0]
        settle = int(rate * (0.002 + 0.0025)) if rate == 48000 else int(rate * 0.05)  # fade + filter
        # 50 ms holds whole periods of both tones, so neither leaks into the other's measure
        tail = y[settle:settle + int(rate * 0.05)]
        assert _level_at(tail, 660, rate) > 0.45 and _level_at(tail, 440, rate) < 1e-3, rate
        # No click: the signal never moves faster than the tones themselves do (max slope 0.043 per frame).
        assert np.abs(np.diff(y)).max() < 0.06, rate
