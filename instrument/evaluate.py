"""`neuralinst eval`: how close a model's renders are to a data set, beside real-audio and noise baselines.

No pretrained audio-embedding model (VGGish, CLAP...) can be had here, so the measure is a Fréchet distance
between Gaussian fits of log-mel-spectrogram frames, computed on N seconds of the model's renders and N seconds
of the data set's test split. The same distance is computed, the same way and on the same amount of audio, for
baselines: the validation split (the floor: real audio of the same set), and white noise, pink noise and
silence-with-dither (ceilings), plus "matched noise" (the floor's own spectrum with random phases: the
right average timbre and nothing else). Two distances put the model on that ruler, each normalised the same way,

    score_x = (d_model - d_valid) / (d_pink - d_valid)     0 = as close as real audio, 1 = as far as pink noise

and the score is their mean: *timbre* (frame statistics, below) and *dynamics* (how the spectrum moves within
half-second windows: per coarse band, the spread and the frame-to-frame change of level). Frame statistics alone
are blind to time: matched noise scores ~0.3 on timbre, but ~0.9 on dynamics.

Timbre features. A raw log-mel frame is spectral *shape* plus *level* (loudness, which depends on the gain a
set was rendered at and on how much of it is quiet) added to every band, so a Gaussian of raw log-mels counts a
level difference N_MELS times over and level dominates. The timbre distance is computed on the per-frame-normalised
log-mel (each frame minus its mean over bands, in dB) with the frame level appended once as one more dimension:
timbre decides, but a model that is too quiet, too loud or too often silent is still seen. The level's own 1-D
Fréchet distance (in dB) and the raw log-mel distance are reported beside it. A floor of -80 dBFS under every
band makes silent frames flat (all-zero shape), so silence is a well-defined point instead of amplified dither.
Everything is analysed at 16 kHz mono (soxr), whatever the model's or data set's rate.

Checked on real data (`neuralinst bench quality --cross-sets data/piano data/drums data/heavy data/piano-notes`):
each set's validation split is closest to its own test split, in every column; raw log-mels instead put drums
closer to the piano set than the piano-notes set is.

Library API (the preset cards and benchmarks call these): `logmel_frames`, `frame_features`, `gaussian_stats`,
`frechet_distance`, `spectral_flatness`, `silent_fraction`, `evaluate_audio`, `load_reference`, `render_model`,
`write_spectrogram_png`, `card_section`, `read_card_figures`, `score_features`, `dynamics_features`,
`matched_noise`. Numpy (and soxr, soundfile) only: instrument/ never imports torch.
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instrument.errors import UserError

ANALYSIS_RATE = 16000
N_FFT = 1024  # 64 ms
HOP = 256  # 16 ms
N_MELS = 64
F_MIN = 30.0
F_MAX = 8000.0
FLOOR_DB = -80.0  # relative to a full-scale sine
SILENT_DB = -60.0  # a frame whose RMS is below this (dBFS) counts as near-silent
INT16_SCALE = 32768.0
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
DYN_BANDS = 4  # coarse bands (16 mel bands each) for the dynamics features: few dimensions, stable on short audio
DYN_WINDOW = 32  # frames: 0.51 s
DYN_HOP = 8  # overlapping windows: more of them from a short render
RULER_MARGIN = 0.25  # a ruler whose floor is within this fraction of its pink-noise ceiling measures nothing
MIN_SECONDS = 1.0  # a few dynamics windows
REFERENCE_SECONDS = 300.0  # of the test split for the reference statistics (it is usually smaller)
BASELINES = ("validation", "white noise", "pink noise", "silence+dither", "matched noise")


# --- signal analysis ----------------------------------------------------------------------------------------
def to_mono(audio: np.ndarray) -> np.ndarray:
    """[T], [C, T] or [B, C, T] float -> float64 [T] (channels averaged, batch items joined end to end)."""
    a = np.asarray(audio, dtype=np.float64)
    if a.ndim == 3:
        a = np.concatenate(list(a.mean(axis=1)), axis=-1)
    elif a.ndim == 2:
        a = a.mean(axis=0)
    elif a.ndim != 1:
        raise ValueError(f"audio must be [T], [C, T] or [B, C, T], not {list(a.shape)}")
    return a


def resample(mono: np.ndarray, sr: int, target: int = ANALYSIS_RATE) -> np.ndarray:
    if sr == target:
        return mono
    import soxr

    return soxr.resample(mono, sr, target, quality="HQ").astype(np.float64)


def _frames(mono: np.ndarray) -> np.ndarray:
    """Hann-windowed frames [F, N_FFT] (the signal is zero-padded to a whole number of hops)."""
    if len(mono) < N_FFT:
        mono = np.pad(mono, (0, N_FFT - len(mono)))
    n = 1 + (len(mono) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(mono, N_FFT)[::HOP][:n]
    return frames * np.hanning(N_FFT + 2)[1:-1]  # periodic-ish Hann without zero end points


def power_spectrum(mono16k: np.ndarray) -> np.ndarray:
    """|STFT|^2 [F, N_FFT/2+1], scaled so a full-scale sine's peak bin is about 1 (0 dB)."""
    spec = np.fft.rfft(_frames(mono16k), axis=-1)
    return (np.abs(spec) ** 2) / (N_FFT / 4) ** 2


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, sr: int = ANALYSIS_RATE, n_fft: int = N_FFT,
                   fmin: float = F_MIN, fmax: float = F_MAX) -> np.ndarray:
    """Triangular filters [n_mels, n_fft/2+1] with peak 1 (HTK mel scale)."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(min(fmax, sr / 2)), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return np.clip(np.minimum(up, down), 0.0, None)


_MEL = mel_filterbank()


def logmel_frames(audio: np.ndarray, sr: int) -> np.ndarray:
    """Log-mel spectrogram frames [F, N_MELS] in dB (re a full-scale sine), floored at FLOOR_DB."""
    mono = resample(to_mono(audio), sr)
    mel = power_spectrum(mono) @ _MEL.T
    return 10.0 * np.log10(mel + 10.0 ** (FLOOR_DB / 10.0))


def frame_features(logmel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shape [F, N_MELS], level [F]): each frame's log-mel minus its band mean, and that mean (dB)."""
    level = logmel.mean(axis=1)
    return logmel - level[:, None], level


def score_features(logmel: np.ndarray) -> np.ndarray:
    """What the timbre distance is computed on: the spectral shape [F, N_MELS] plus the frame level once [F, 1].
    Raw log-mels count a level difference in every band (N_MELS times over); here it counts once, beside the
    shape, so a model that is too quiet, too loud or too often silent is still seen, without level dominating."""
    shape, level = frame_features(logmel)
    return np.concatenate([shape, level[:, None]], axis=1)


def dynamics_features(logmel: np.ndarray) -> np.ndarray:
    """How the spectrum moves: per 0.5 s window (hop 0.13 s), in DYN_BANDS coarse bands, the standard deviation
    of the band level over the window and its mean absolute frame-to-frame change (dB) [W, 2 * DYN_BANDS].
    Frame statistics alone cannot tell music from noise that has the music's average spectrum (phase-randomised
    audio scores ~0.3 on timbre); notes, onsets and decays can (it scores ~0.9 here)."""
    coarse = logmel.reshape(len(logmel), DYN_BANDS, -1).mean(axis=2)
    if len(coarse) < DYN_WINDOW:
        coarse = np.pad(coarse, ((0, DYN_WINDOW - len(coarse)), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(coarse, DYN_WINDOW, axis=0)[::DYN_HOP]  # [W, bands, win]
    spread = windows.std(axis=2)
    motion = np.abs(np.diff(windows, axis=2)).mean(axis=2)
    return np.concatenate([spread, motion], axis=1)


def frame_rms_db(audio: np.ndarray, sr: int) -> np.ndarray:
    mono = resample(to_mono(audio), sr)
    if len(mono) < N_FFT:
        mono = np.pad(mono, (0, N_FFT - len(mono)))
    frames = np.lib.stride_tricks.sliding_window_view(mono, N_FFT)[::HOP]
    return 10.0 * np.log10((frames ** 2).mean(axis=1) + 1e-12)


def silent_fraction(audio: np.ndarray, sr: int, threshold_db: float = SILENT_DB) -> float:
    """The fraction of 64 ms frames whose RMS is below `threshold_db` dBFS."""
    return float((frame_rms_db(audio, sr) < threshold_db).mean())


def spectral_flatness(audio: np.ndarray, sr: int, threshold_db: float = SILENT_DB) -> float:
    """Mean Wiener entropy (geometric / arithmetic mean of the power spectrum) over the frames that are not
    near-silent: ~0.56 for white noise through a Hann window, ~0 for a pure tone. NaN if every frame is silent."""
    mono = resample(to_mono(audio), sr)
    power = power_spectrum(mono)[:, 1:] + 1e-20  # without DC
    loud = frame_rms_db(mono, ANALYSIS_RATE)[: len(power)] >= threshold_db
    if not loud.any():
        return float("nan")
    p = power[loud]
    flat = np.exp(np.log(p).mean(axis=1)) / p.mean(axis=1)
    return float(flat.mean())


# --- the Fréchet distance -----------------------------------------------------------------------------------
@dataclass
class GaussianStats:
    mean: np.ndarray  # [D]
    cov: np.ndarray  # [D, D]
    count: int


def gaussian_stats(x: np.ndarray) -> GaussianStats:
    """Mean and (unbiased) covariance of rows of x [N, D]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if len(x) < 2:
        raise ValueError("need at least two frames for a covariance")
    return GaussianStats(x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False)), len(x))


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1^1/2 cov2 cov1^1/2)^1/2).
    Computed with symmetric eigendecompositions, so it is real, >= 0, and exactly symmetric in its arguments
    up to rounding (no complex sqrtm of a non-symmetric product)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError("the two Gaussians must have the same dimension")
    s1 = _sqrt_psd(cov1)
    middle = s1 @ cov2 @ s1
    w = np.linalg.eigvalsh((middle + middle.T) / 2)
    cross = np.sqrt(np.clip(w, 0.0, None)).sum()
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)
    return max(d, 0.0)


def frechet_between(a: GaussianStats, b: GaussianStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# --- baselines ------------------------------------------------------------------------------------------------
def white_noise(n: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n) * rms


def pink_noise(n: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    """1/f power noise: white noise shaped in the frequency domain (amplitude 1/sqrt(f)), scaled to `rms`."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x * (rms / (np.sqrt((x ** 2).mean()) + 1e-20))


def matched_noise(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise with exactly the long-term spectrum of `audio` (its Fourier magnitudes with random phases): right
    timbre on average, no notes, no onsets - what a model that only learnt the spectral envelope would make."""
    spec = np.fft.rfft(audio)
    return np.fft.irfft(np.abs(spec) * np.exp(2j * np.pi * rng.random(len(spec))), len(audio))


def dithered_silence(n: int, rng: np.random.Generator) -> np.ndarray:
    """Digital silence with TPDF dither of one 16-bit LSB (what a silent 16-bit recording holds)."""
    return (rng.random(n) - rng.random(n)) / INT16_SCALE


# --- the evaluation -------------------------------------------------------------------------------------------
@dataclass
class Measure:
    """One signal compared with the reference: the score's two distances, and level and raw log-mel distances."""

    fd: float  # timbre: Fréchet distance of `score_features` (shape + level once; dB^2)
    fd_dynamics: float  # dynamics: Fréchet distance of `dynamics_features` (dB^2)
    fd_level: float  # 1-D Fréchet distance of frame levels, as dB (its square root)
    fd_logmel: float  # Fréchet distance of raw log-mel frames (dB^2), for the record
    flatness: float
    silent: float
    seconds: float


@dataclass
class EvalResult:
    model: Measure
    reference: Measure  # the reference against itself: distances 0; its flatness and silent fraction
    baselines: dict[str, Measure]
    score: float  # the mean of the timbre and dynamics scores (of the one that is defined, if one is NaN)
    score_timbre: float  # (fd_model - fd_validation) / (fd_pink - fd_validation); NaN if the ruler is degenerate
    score_dynamics: float  # the same with fd_dynamics (NaN when too little audio makes the floor as far as noise)
    sample_rate: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return json.loads(json.dumps(d, default=float, allow_nan=True))

    def scores(self, m: Measure) -> tuple[float, float, float]:
        """(score, timbre, dynamics) of any measure on this result's ruler."""
        def ruler(key: str) -> float:
            floor = getattr(self.baselines["validation"], key)
            ceiling = getattr(self.baselines["pink noise"], key)
            if ceiling - floor <= RULER_MARGIN * ceiling:  # real audio is as far as noise: too little audio
                return float("nan")
            return (getattr(m, key) - floor) / (ceiling - floor)

        timbre, dynamics = ruler("fd"), ruler("fd_dynamics")
        parts = [v for v in (timbre, dynamics) if not math.isnan(v)]
        return (sum(parts) / len(parts) if parts else float("nan")), timbre, dynamics

    def table(self) -> str:
        rows = [("model", self.model), ("reference (test)", self.reference)]
        rows += [(f"{k}{' (floor)' if k == 'validation' else ''}", m) for k, m in self.baselines.items()]
        out = [f"{'':22s}{'score':>7s}{'timbre':>8s}{'dynamics':>9s}{'FD timbre':>11s}{'FD dyn':>8s}"
               f"{'level dB':>9s}{'FD log-mel':>11s}{'flatness':>9s}{'silent':>7s}"]
        for name, m in rows:
            if m is self.reference:  # distances to itself are 0 by construction: show only what it is like
                out.append(f"{name:22s}{'-':>7s}{'-':>8s}{'-':>9s}{'-':>11s}{'-':>8s}{'-':>9s}{'-':>11s}"
                           f"{m.flatness:9.3f}{m.silent:7.1%}")
                continue
            score, timbre, dynamics = self.scores(m)
            out.append(f"{name:22s}{score:7.3f}{timbre:8.3f}{dynamics:9.3f}{m.fd:11.1f}{m.fd_dynamics:8.1f}"
                       f"{m.fd_level:9.2f}{m.fd_logmel:11.0f}{m.flatness:9.3f}{m.silent:7.1%}")
        out.append(f"score {self.score:.3f} = mean of timbre {self.score_timbre:.3f} and dynamics "
                   f"{self.score_dynamics:.3f}  (0 = as close as the validation split, 1 = as far as pink noise; "
                   f"{self.seconds:.0f} s each, analysed at {ANALYSIS_RATE} Hz)")
        return "\n".join(out)


def _measure(audio: np.ndarray, sr: int, ref: tuple[GaussianStats, ...]) -> Measure:
    """`audio` against the reference's (score features, dynamics, level, raw log-mel) statistics."""
    logmel = logmel_frames(audio, sr)
    _, level = frame_features(logmel)
    ref_score, ref_dynamics, ref_level, ref_logmel = ref
    return Measure(
        fd=frechet_between(gaussian_stats(score_features(logmel)), ref_score),
        fd_dynamics=frechet_between(gaussian_stats(dynamics_features(logmel)), ref_dynamics),
        fd_level=math.sqrt(frechet_between(gaussian_stats(level), ref_level)),
        fd_logmel=frechet_between(gaussian_stats(logmel), ref_logmel),
        flatness=spectral_flatness(audio, sr),
        silent=silent_fraction(audio, sr),
        seconds=to_mono(audio).shape[-1] / sr,
    )


def _split_alternate(mono: np.ndarray, sr: int, block_seconds: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of one recording, alternating 2 s blocks (a floor when there is no validation split)."""
    block = max(1, int(block_seconds * sr))
    n = len(mono) // block
    if n < 2:
        half = len(mono) // 2
        return mono[:half], mono[half: 2 * half]
    blocks = mono[: n * block].reshape(n, block)
    return blocks[0::2].reshape(-1), blocks[1::2].reshape(-1)


def evaluate_audio(audio: np.ndarray, reference: np.ndarray, sr: int, floor: np.ndarray | None = None,
                   reference_sr: int | None = None, seed: int = 0, seconds: float | None = None) -> EvalResult:
    """Compare `audio` (a model's render, at `sr`) with `reference` (real audio, at `reference_sr`, default `sr`).

    The reference statistics use all of `reference` (give it more than `seconds`: the test split, a few minutes).
    Every candidate - the model, the floor, each noise - is cut to the same length (`seconds`, or the shortest
    of model and floor), so every distance carries the same small-sample bias and the figures are comparable.
    `floor` is other real audio of the same set (the validation split); without it the reference is split into
    alternating 2 s blocks, one half the reference and the other the floor. Audio is [T], [C, T] or
    [B, C, T] (clips joined end to end).
    """
    reference_sr = reference_sr or sr
    ref = to_mono(reference)
    model = to_mono(audio)
    if not np.isfinite(model).all():
        bad = int((~np.isfinite(model)).sum())
        raise UserError(f"the audio to score holds {bad} NaN or infinite samples; the model is broken, not just poor.")
    if floor is None:
        ref, floor_mono = _split_alternate(ref, reference_sr)
    else:
        floor_mono = to_mono(floor)
    length = min(len(model) / sr, len(floor_mono) / reference_sr, *([seconds] if seconds else []))
    if length < MIN_SECONDS or len(ref) / reference_sr < MIN_SECONDS:
        raise UserError(f"too little audio to compare ({min(length, len(ref) / reference_sr):.2f} s); "
                        f"at least {MIN_SECONDS:g} s of each is needed.")
    model = model[: int(length * sr)]
    floor_mono = floor_mono[: int(length * reference_sr)]

    ref_logmel = logmel_frames(ref, reference_sr)
    _, ref_level = frame_features(ref_logmel)
    ref_stats = (gaussian_stats(score_features(ref_logmel)), gaussian_stats(dynamics_features(ref_logmel)),
                 gaussian_stats(ref_level), gaussian_stats(ref_logmel))
    rng = np.random.default_rng(seed)
    n = int(length * reference_sr)
    rms = float(np.sqrt((ref ** 2).mean())) or 1e-3  # noise at the reference's loudness, so level is not the tell
    baselines = {
        "validation": _measure(floor_mono, reference_sr, ref_stats),
        "white noise": _measure(white_noise(n, rms, rng), reference_sr, ref_stats),
        "pink noise": _measure(pink_noise(n, rms, rng), reference_sr, ref_stats),
        "silence+dither": _measure(dithered_silence(n, rng), reference_sr, ref_stats),
        "matched noise": _measure(matched_noise(floor_mono, rng), reference_sr, ref_stats),
    }
    model_measure = _measure(model, sr, ref_stats)
    reference_measure = _measure(ref, reference_sr, ref_stats)
    result = EvalResult(model_measure, reference_measure, baselines, 0.0, 0.0, 0.0, sr, length,
                        {"reference_seconds": len(ref) / reference_sr})
    result.score, result.score_timbre, result.score_dynamics = (float(v) for v in result.scores(model_measure))
    return result


# --- reading references and rendering models ----------------------------------------------------------------
def _read_audio_file(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own error types for unreadable files
        raise UserError(f"{path}: cannot be read as audio ({e}).") from None
    return audio.T, sr


def _from_chunks(chunks: np.ndarray, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Random chunks of an int16 [N, C, T] split, joined until `seconds` (mono float)."""
    want = int(seconds * sr)
    order = rng.permutation(len(chunks))
    pieces, have = [], 0
    for i in order:
        piece = np.asarray(chunks[i], dtype=np.float64).mean(axis=0) / INT16_SCALE
        pieces.append(piece)
        have += len(piece)
        if have >= want:
            break
    return np.concatenate(pieces)[:want] if pieces else np.zeros(0)


def load_split_audio(data: str | Path, split: str = "valid") -> tuple[np.ndarray, int]:
    """(mono float32, sample rate): the whole of one split of a prepared data set, chunks end to end (what the
    validation-split choices of a preset's checkpoint and grain are scored against)."""
    path = Path(data)
    try:
        chunks = np.load(path / f"{split}.npy")
        sr = int(json.loads((path / "manifest.json").read_text())["sample_rate"])
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: no readable {split} split ({e}); prepare the data set again.") from None
    mono = chunks.astype(np.float32).reshape(-1)
    return (mono / 32768.0 if chunks.dtype == np.int16 else mono), sr


def load_reference(data: str | Path, seconds: float, seed: int = 0,
                   reference_seconds: float = REFERENCE_SECONDS) -> tuple[np.ndarray, np.ndarray | None, int, str]:
    """(reference, floor or None, sample rate, description), mono float.

    A data set folder: up to `reference_seconds` of its test split (random chunks) and `seconds` of its
    validation split. A folder of audio files (or one file): random pieces of up to 10 s per file, up to
    `reference_seconds + seconds` in all; `evaluate_audio` then splits it into reference and floor halves."""
    path = Path(data)
    rng = np.random.default_rng(seed)
    if not path.exists():
        raise UserError(f"{path}: no such data set, folder or audio file.")
    reference_seconds = max(reference_seconds, seconds)
    manifest = path / "manifest.json"
    if path.is_dir() and manifest.is_file():
        try:
            sr = int(json.loads(manifest.read_text())["sample_rate"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{manifest}: has no readable sample_rate; prepare the data set again.") from None
        splits = {}
        for split in ("test", "valid"):
            f = path / f"{split}.npy"
            if f.is_file():
                try:
                    a = np.load(f, mmap_mode="r")
                except (ValueError, OSError) as e:
                    raise UserError(f"{f}: cannot be read ({e}); prepare the data set again.") from None
                if a.dtype != np.int16 or a.ndim != 3 or len(a) == 0:
                    raise UserError(f"{f}: expected int16 chunks [N, C, T], found {a.dtype} {list(a.shape)}.")
                splits[split] = a
        if "test" not in splits:
            raise UserError(f"{path} has no test split (test.npy); prepare the data set again.")
        test = _from_chunks(splits["test"], reference_seconds, sr, rng)
        valid = _from_chunks(splits["valid"], seconds, sr, rng) if "valid" in splits else None
        floor = "valid split" if valid is not None else "half of test"
        return test, valid, sr, f"{path} ({len(test) / sr:.0f} s of the test split; floor: {floor})"
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path}: holds no data set (manifest.json) and no audio files.")
    pieces, have, want, sr = [], 0.0, reference_seconds + seconds, None
    for i in rng.permutation(len(files)):
        audio, file_sr = _read_audio_file(files[i])
        mono = to_mono(audio)
        piece = int(10 * file_sr)
        if len(mono) > piece:
            start = int(rng.integers(0, len(mono) - piece))
            mono = mono[start: start + piece]
        sr = sr or file_sr  # the first file's rate; others are resampled to it
        pieces.append(resample(mono, file_sr, sr))
        have += len(mono) / file_sr
        if have >= want:
            break
    joined = np.concatenate(pieces)
    return joined, None, sr, f"{path} ({have:.0f} s from {len(pieces)} audio file(s); floor: half of it)"


def resolve_model_path(model: str) -> Path:
    p = Path(model).expanduser()
    if p.suffix == ".onnx" or p.is_file():
        return p
    try:
        from instrument.presets import load_preset
    except ImportError:
        raise UserError(f"{model}: no such model file, and presets are not available.") from None
    return Path(load_preset(model).model_path)


def render_model(model: str | Path, seconds: float, seed: int = 0,
                 defaults: dict[str, float] | None = None) -> tuple[np.ndarray, int, dict[str, Any]]:
    """`seconds` of a model's output (float32 [C, n]) through the live runtime, and a description. A preset plays
    with its defaults for the model's controls (temperature, grain), as `neuralinst play` starts it (`defaults`:
    those to use instead, e.g. a preset's when `model` is its .onnx file).
    Streaming models: `generate(n)`. WaveGAN (one-shot clips): clips with random z from the latent's range
    (uniform, the prior it is trained with), joined end to end."""
    from instrument.model import load_model

    from instrument.params import apply_role_defaults

    path = resolve_model_path(str(model))
    rt = load_model(path, device="cpu", threads=1, batch=1)
    if defaults is None and path != Path(str(model)).expanduser():  # a preset: its defaults are its sound
        from instrument.presets import load_preset

        defaults = load_preset(str(model)).defaults
    apply_role_defaults(rt, defaults or {})
    meta = rt.meta
    n = int(seconds * meta.sample_rate)
    rt.reset(seed)
    if meta.kind == "wavegan":
        rng = np.random.default_rng(seed)
        latent = meta.controls_with_role("latent")
        clips, have = [], 0
        while have < n:
            for c in latent:
                rt.set_control(c.name, rng.uniform(c.minimum, c.maximum, size=c.shape).astype(np.float32))
            clip = np.asarray(rt.step())[0]
            clips.append(clip)
            have += clip.shape[-1]
        audio = np.concatenate(clips, axis=-1)[:, :n]
    else:
        audio = np.asarray(rt.generate(n))
    return audio, meta.sample_rate, {"model": str(path), "kind": meta.kind, "name": meta.name}


# --- the spectrogram picture ----------------------------------------------------------------------------------
_COLORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                    [250, 193, 39], [252, 255, 164]], dtype=np.float64)  # an inferno-like ramp


def _colorize(v: np.ndarray) -> np.ndarray:
    """v in [0, 1] -> uint8 RGB by linear interpolation along _COLORS."""
    x = np.clip(v, 0, 1) * (len(_COLORS) - 1)
    i = np.minimum(x.astype(int), len(_COLORS) - 2)
    t = (x - i)[..., None]
    return (_COLORS[i] * (1 - t) + _COLORS[i + 1] * t).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A truecolour PNG from uint8 [H, W, 3] (zlib + struct; no imaging library)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_spectrogram_png(path: str | Path, panels: list[np.ndarray], max_width: int = 1600,
                          band_height: int = 3, low_db: float = FLOOR_DB, high_db: float = 0.0) -> Path:
    """Stack log-mel spectrograms ([F, N_MELS] dB each, e.g. model above reference) into one PNG: time to the
    right, low frequencies at the bottom, -80..0 dB on an inferno-like ramp, a grey line between panels."""
    width = min(max_width, max(len(p) for p in panels))
    images = []
    for p in panels:
        if len(p) > width:  # average groups of frames down to `width` columns
            edges = np.linspace(0, len(p), width + 1).astype(int)
            p = np.stack([p[a:max(b, a + 1)].mean(axis=0) for a, b in zip(edges[:-1], edges[1:])])
        img = np.full((width, p.shape[1]), low_db)
        img[: len(p)] = p
        v = (img.T[::-1] - low_db) / (high_db - low_db)  # [mels, width], high frequencies on top
        images.append(np.repeat(_colorize(v), band_height, axis=0))
        images.append(np.full((4, width, 3), 128, np.uint8))
    rgb = np.concatenate(images[:-1], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(rgb))
    return path


# --- model cards ----------------------------------------------------------------------------------------------
CARD_MARK = "neuralinst-eval:"  # <!-- neuralinst-eval: {json} --> in a MODEL_CARD.md, read by benchmarks


def card_section(result: EvalResult, data: str, seconds: float, seed: int) -> str:
    """The quality section of a MODEL_CARD.md: a table a reader can read, and one machine-readable comment
    (`benchmarks/preset_quality.py` re-runs the same evaluation and compares)."""
    figures = {"data": str(data), "seconds": seconds, "seed": seed, "score": round(result.score, 4),
               "score_timbre": round(result.score_timbre, 4), "score_dynamics": round(result.score_dynamics, 4),
               "fd": round(result.model.fd, 2), "fd_dynamics": round(result.model.fd_dynamics, 2),
               "fd_level_db": round(result.model.fd_level, 2)}
    rows = [("this model", result.model), *[(k, m) for k, m in result.baselines.items()]]
    lines = [f"Measured with `neuralinst eval --model <this preset> --data {data} --seconds {seconds:g} "
             f"--seed {seed}` (Fréchet distances of log-mel timbre and dynamics statistics; score 0 = as close "
             "as the validation split, 1 = as far as pink noise):", "",
             "| audio | score | timbre | dynamics | level distance (dB) | spectral flatness | near-silent frames |",
             "|---|---|---|---|---|---|---|"]
    for name, m in rows:
        score, timbre, dynamics = result.scores(m)
        lines.append(f"| {name} | {score:.3f} | {timbre:.3f} | {dynamics:.3f} | {m.fd_level:.2f} | "
                     f"{m.flatness:.3f} | {m.silent:.1%} |")
    lines += ["", f"<!-- {CARD_MARK} {json.dumps(figures, sort_keys=True)} -->"]
    return "\n".join(lines)


def read_card_figures(text: str) -> dict[str, Any] | None:
    """The figures `card_section` wrote into a model card, or None."""
    start = text.find(CARD_MARK)
    if start < 0:
        return None
    end = text.find("-->", start)
    try:
        return json.loads(text[start + len(CARD_MARK): end if end > 0 else None])
    except json.JSONDecodeError:
        return None


# --- the command ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a preset name or a model .onnx file (or an audio file to score)")
    p.add_argument("--data", required=True, help="a data set folder (its test split), a folder of audio, or a file")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of model audio and of each baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default=None, help="write a spectrogram picture: the model's render above the data's")
    p.add_argument("--json", default=None, help="write the figures as JSON")
    p.add_argument("--card", default=None, help="write the model card's quality section (Markdown) to this file")


def run(args: argparse.Namespace) -> int:
    if not (0.5 <= args.seconds <= 3600):
        raise UserError(f"--seconds {args.seconds} is out of range (0.5 to 3600).")
    reference, floor, ref_sr, ref_desc = load_reference(args.data, args.seconds, args.seed)
    model_path = Path(args.model).expanduser()
    if model_path.suffix.lower() in AUDIO_SUFFIXES:  # score a recording (e.g. a jam, or a render made elsewhere)
        if not model_path.is_file():
            raise UserError(f"{model_path}: no such audio file.")
        audio, sr = _read_audio_file(model_path)
        info = {"model": str(model_path), "kind": "audio file"}
    else:
        audio, sr, info = render_model(args.model, args.seconds, args.seed)
    result = evaluate_audio(audio[..., : int(args.seconds * sr)], reference, sr, floor=floor,
                            reference_sr=ref_sr, seed=args.seed, seconds=args.seconds)
    result.info = {**info, "data": str(args.data), "seed": args.seed}
    print(f"model: {info['model']} ({info['kind']})\ndata:  {ref_desc}")
    print(result.table())
    if args.png:
        panels = [logmel_frames(audio[..., : int(result.seconds * sr)], sr),
                  logmel_frames(reference[: int(result.seconds * ref_sr)], ref_sr)]
        print(f"spectrogram (model above, data below): {write_spectrogram_png(args.png, panels)}")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
    if args.card:
        Path(args.card).write_text(card_section(result, args.data, args.seconds, args.seed) + "\n")
    return 0
