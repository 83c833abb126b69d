"""Voices: what a note plays.

- `VoicePool` mixes already-rendered clips in the audio callback: ≥ 16 voices, gain from velocity, a short fade on
  release and on stealing, a sample-accurate start offset inside the block, and the pitch wheel: `set_rate` bends
  every sounding voice at once (phase-continuous linear-interpolated playback). Only numpy arithmetic into
  preallocated scratch memory, a Python loop over voices (not samples).
- `LatentCache` keeps one WaveGAN clip for the current latent, rendered in the background and pre-pitched per key
  (resampled relative to the root note), so a note-on never waits for inference: it plays the newest clip ready.
- `ContinuousClips` is the `continuous` mode: successive clips, each from a latent that drifts, overlap-added with
  equal-power crossfades into one model-rate stream.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque

import numpy as np
import soxr

N_VOICES = 16
RELEASE_SECONDS = 0.03
STEAL_SECONDS = 0.005
KEY_SPAN = 36  # keys pre-rendered each side of the root note
EDGE_FADE_SECONDS = (0.001, 0.01)  # fade-in / fade-out applied to every clip, so onsets and ends never click


def cos_fade(frames: int) -> np.ndarray:
    """1 → 0 over `frames` (half cosine), shaped [frames, 1] to broadcast over channels."""
    return (0.5 * (1.0 + np.cos(np.pi * (np.arange(frames, dtype=np.float64) + 1) / frames))
            ).astype(np.float32)[:, None]


class VoicePool:
    """Polyphonic one-shot player. `note_on`/`note_off`/`mix_into` are called from the audio callback only."""

    def __init__(self, block: int, channels: int, samplerate: int, polyphony: int = N_VOICES):
        self.polyphony = polyphony
        slots = 2 * polyphony  # releasing voices fade out in the extra slots while new ones start
        self.slots = slots
        self.clip: list[np.ndarray | None] = [None] * slots
        self.pos = [0.0] * slots  # fractional once a bend has played the clip at another rate
        self.offset = [0] * slots  # start inside the next block (sample-accurate scheduling)
        self.gain = [0.0] * slots
        self.note = [-1] * slots
        self.fade: list[np.ndarray | None] = [None] * slots  # the fade-out curve once releasing
        self.fade_pos = [0] * slots
        self.started = [0] * slots  # order of note-ons, for stealing the oldest
        self._counter = 0
        self.release_curve = cos_fade(max(1, int(RELEASE_SECONDS * samplerate)))
        self.steal_curve = cos_fade(max(1, int(STEAL_SECONDS * samplerate)))
        self._scratch = np.zeros((block * 4, channels), np.float32)
        self.stolen = 0
        self.rate = 1.0  # playback rate of every voice: 2 ** (bend semitones / 12)
        # Interpolation scratch (a callback may ask for up to 4 blocks).
        self._k = np.arange(block * 4, dtype=np.float64)
        self._idx = np.zeros(block * 4, np.float64)
        self._i0 = np.zeros(block * 4, np.intp)
        self._i1 = np.zeros(block * 4, np.intp)
        self._frac = np.zeros((block * 4, 1), np.float32)
        self._next = np.zeros((block * 4, channels), np.float32)

    def set_rate(self, rate: float) -> None:
        """Bend: every voice, sounding or new, plays its clip `rate` times as fast from its current position."""
        self.rate = float(rate)

    def active(self) -> int:
        return sum(1 for c, f in zip(self.clip, self.fade) if c is not None and f is None)

    def note_on(self, note: int, gain: float, clip: np.ndarray, offset: int = 0) -> None:
        held = [i for i in range(self.slots) if self.clip[i] is not None and self.fade[i] is None]
        for i in held:  # retrigger: the same key releases its previous voice
            if self.note[i] == note:
                self._release(i, self.steal_curve)
        held = [i for i in held if self.fade[i] is None]
        if len(held) >= self.polyphony:  # steal the oldest held voice, with a short fade
            self._release(min(held, key=lambda i: self.started[i]), self.steal_curve)
            self.stolen += 1
        free = [i for i in range(self.slots) if self.clip[i] is None]
        if free:
            i = free[0]
        else:  # every slot is fading: reuse the one furthest through its fade (nearly silent)
            i = max(range(self.slots), key=lambda j: self.fade_pos[j] / max(1, len(self.fade[j])))
        self._counter += 1
        self.clip[i], self.pos[i], self.offset[i], self.gain[i] = clip, 0.0, offset, gain
        self.note[i], self.fade[i], self.fade_pos[i], self.started[i] = note, None, 0, self._counter

    def note_off(self, note: int) -> None:
        for i in range(self.slots):
            if self.note[i] == note and self.clip[i] is not None and self.fade[i] is None:
                self._release(i, self.release_curve)

    def all_off(self) -> None:
        for i in range(self.slots):
            if self.clip[i] is not None and self.fade[i] is None:
                self._release(i, self.release_curve)

    def _release(self, i: int, curve: np.ndarray) -> None:
        self.fade[i], self.fade_pos[i] = curve, 0

    def _free(self, i: int) -> None:
        self.clip[i], self.fade[i], self.note[i] = None, None, -1

    def mix_into(self, out: np.ndarray, frames: int) -> None:
        """Add every sounding voice into out[:frames] ([frames, channels])."""
        rate = self.rate
        for i in range(self.slots):
            clip = self.clip[i]
            if clip is None:
                continue
            o = self.offset[i]
            if o >= frames:  # starts in a later block
                self.offset[i] = o - frames
                continue
            self.offset[i] = 0
            pos = self.pos[i]
            if rate == 1.0 and pos.is_integer():  # unbent: a plain slice
                p = int(pos)
                n = min(frames - o, len(clip) - p)
                s = self._scratch[:n]
                np.multiply(clip[p:p + n], self.gain[i], out=s)
                done = p + n >= len(clip)
                self.pos[i] = float(p + n)
            else:
                n = self._read_bent(clip, pos, rate, frames - o)
                s = self._scratch[:n]
                np.multiply(s, self.gain[i], out=s)
                done = n < frames - o
                self.pos[i] = pos + rate * n
            fade = self.fade[i]
            if fade is not None:
                fp = self.fade_pos[i]
                m = min(n, len(fade) - fp)
                np.multiply(s[:m], fade[fp:fp + m], out=s[:m])
                s[m:] = 0.0
                self.fade_pos[i] = fp + n
                done = done or fp + n >= len(fade)
            np.add(out[o:o + n], s, out=out[o:o + n])
            if done:
                self._free(i)

    def _read_bent(self, clip: np.ndarray, pos: float, rate: float, want: int) -> int:
        """Up to `want` frames of `clip` from fractional `pos` at `rate`, linearly interpolated into the scratch;
        returns how many (fewer once the clip ends). Linear interpolation is enough here: the pre-pitched clips
        are band-limited well below the device Nyquist, and a bend is a few semitones."""
        n = min(want, max(0, int((len(clip) - 1 - pos) / rate) + 1))
        if n <= 0 or len(clip) < 2:
            return 0
        idx = self._idx[:n]
        np.multiply(self._k[:n], rate, out=idx)
        idx += pos
        i0, i1 = self._i0[:n], self._i1[:n]
        np.copyto(i0, idx, casting="unsafe")  # floor: positions are never negative
        np.minimum(i0, len(clip) - 2, out=i0)
        np.add(i0, 1, out=i1)
        frac = self._frac[:n]
        np.subtract(idx[:, None], i0[:, None], out=frac, casting="same_kind")
        a, b = self._scratch[:n], self._next[:n]
        np.take(clip, i0, axis=0, out=a)
        np.take(clip, i1, axis=0, out=b)
        np.subtract(b, a, out=b)
        np.multiply(b, frac, out=b)
        np.add(a, b, out=a)
        return n


def edge_fades(clip: np.ndarray, rate: int) -> np.ndarray:
    """Fade a clip's first and last milliseconds in place, so it starts and stops without a click."""
    a = min(len(clip) // 2, max(1, int(EDGE_FADE_SECONDS[0] * rate)))
    b = min(len(clip) // 2, max(1, int(EDGE_FADE_SECONDS[1] * rate)))
    clip[:a] *= cos_fade(a)[::-1]
    clip[-b:] *= cos_fade(b)
    return clip


class LatentCache:
    """The clip for the current latent, pre-pitched per key, refreshed by a background thread.

    `pitched[note]` is a device-rate clip [frames, channels] (float32), or None until rendered; the audio callback
    reads it with one list index (atomic under the GIL). `clip_for(note)` falls back to the nearest ready key, so a
    note plays at once even while the cache is still rendering.
    """

    def __init__(self, model, mapper, out_rate: int, out_channels: int, root_note: int = 60,
                 key_span: int = KEY_SPAN):
        self.model, self.mapper = model, mapper
        self.model_rate = int(model.meta.sample_rate)
        self.out_rate, self.out_channels = int(out_rate), int(out_channels)
        self.root_note = int(root_note)
        lo, hi = max(0, root_note - key_span), min(127, root_note + key_span)
        # Render order: the root first, then outward, so nearby keys are exact soonest.
        self.keys = sorted(range(lo, hi + 1), key=lambda k: (abs(k - root_note), k))
        self.pitched: list[np.ndarray | None] = [None] * 128
        self.generation = 0  # bumped whenever the latent changes
        self.rendered_generation = -1  # the generation whose every key is rendered
        self.compute_seconds = 0.0
        self.frames_rendered = 0
        self.clips_rendered = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    # --- any thread ------------------------------------------------------------------------------------------
    def invalidate(self) -> None:
        self.generation += 1
        self._wake.set()

    def ready(self) -> bool:
        return self.rendered_generation == self.generation

    def wait_ready(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while not self.ready() and time.monotonic() < end:
            time.sleep(0.005)
        return self.ready()

    # --- audio callback ----------------------------------------------------------------------------------
    def clip_for(self, note: int) -> np.ndarray | None:
        clip = self.pitched[note] if 0 <= note < 128 else None
        if clip is not None:
            return clip
        for d in range(1, 128):  # nearest ready key (a wrong pitch beats a missing note)
            for k in (note - d, note + d):
                if 0 <= k < 128 and self.pitched[k] is not None:
                    return self.pitched[k]
        return None

    # --- background thread -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="neuralinst-latent-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def render_clip(self) -> np.ndarray:
        """One model clip for the mapper's current latent, [n, C] at the model rate."""
        if self.mapper.active:
            self.model.set_control(self.mapper.control.name, self.mapper.vector())
        t0 = time.perf_counter()
        audio = np.asarray(self.model.step(), dtype=np.float32)[0]
        self.compute_seconds += time.perf_counter() - t0
        self.frames_rendered += audio.shape[-1]
        self.clips_rendered += 1
        return np.ascontiguousarray(audio.T)

    def pitch(self, clip: np.ndarray, note: int) -> np.ndarray:
        ratio = 2.0 ** ((note - self.root_note) / 12.0)  # > 1: higher and shorter
        y = soxr.resample(clip, self.model_rate * ratio, self.out_rate, quality="HQ").astype(np.float32)
        if y.shape[1] != self.out_channels:
            y = np.repeat(y[:, :1], self.out_channels, axis=1) if y.shape[1] == 1 else y[:, : self.out_channels]
        return edge_fades(np.ascontiguousarray(y), self.out_rate)

    def _run(self) -> None:
        while not self._stop:
            gen = self.generation
            if gen == self.rendered_generation:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            clip = self.render_clip()
            for k in self.keys:
                if self._stop or self.generation != gen:
                    break  # the latent moved on: start again from the root with the newest latent
                self.pitched[k] = self.pitch(clip, k)
                time.sleep(0)  # let the audio threads take the GIL between keys
            else:
                self.rendered_generation = gen


class ContinuousClips:
    """WaveGAN as a stream: clip after clip, each from a latent that drifts, joined by equal-power crossfades.

    The drift is a seeded random walk added to the mapper's latent: every clip moves it by `drift` × a random
    unit step, pulled back toward the knobs' latent so it wanders without escaping. A background thread keeps
    `ahead` joined segments ready, so `render` (the producer) never waits for inference unless the model is slower
    than real time; then the shortfall is silence, counted in `starved_frames`.
    """

    def __init__(self, model, mapper, seed: int = 0, drift: float = 0.2, overlap: float = 0.25, ahead: int = 2):
        self.model, self.mapper = model, mapper
        self.sample_rate = int(model.meta.sample_rate)
        self.channels = int(model.meta.channels)
        self.clip_frames = int(model.meta.block_size)
        self.overlap = max(1, int(self.clip_frames * overlap))
        self.drift = float(drift)
        self.ahead = ahead
        self._rng = np.random.default_rng(seed)
        self._walk = None
        self._tail: np.ndarray | None = None  # the last clip's crossfade region, waiting for the next clip
        t = (np.arange(self.overlap, dtype=np.float64) + 0.5) / self.overlap
        self._fade_in = np.sin(0.5 * np.pi * t).astype(np.float32)[:, None]
        self._fade_out = np.cos(0.5 * np.pi * t).astype(np.float32)[:, None]
        self._segments: deque[np.ndarray] = deque()
        self._current = np.zeros((0, self.channels), np.float32)
        self.compute_seconds = 0.0
        self.frames_rendered = 0
        self.starved_frames = 0
        self._stop = False
        self._thread: threading.Thread | None = None

    def latent(self) -> np.ndarray | None:
        if not self.mapper.active:
            return None
        base = self.mapper.vector()
        if self.mapper.role != "latent":
            return base
        c = self.mapper.control
        if self._walk is None:
            self._walk = np.zeros(base.size, np.float32)
        step = self._rng.standard_normal(base.size).astype(np.float32)
        step *= self.drift * math.sqrt(base.size) * 0.1 / (np.linalg.norm(step) + 1e-9)
        self._walk = 0.9 * self._walk + step  # a leaky walk: wanders, but returns toward the knobs' latent
        return np.clip(base + self._walk.reshape(base.shape), c.minimum, c.maximum)

    def next_segment(self) -> np.ndarray:
        """Render one clip and return the audio it completes: crossfade with the previous tail, then its body."""
        z = self.latent()
        if z is not None:
            self.model.set_control(self.mapper.control.name, z)
        t0 = time.perf_counter()
        clip = np.ascontiguousarray(np.asarray(self.model.step(), dtype=np.float32)[0].T)
        self.compute_seconds += time.perf_counter() - t0
        head, body, tail = clip[: self.overlap], clip[self.overlap: -self.overlap], clip[-self.overlap:]
        if self._tail is None:
            joined = head * self._fade_in  # the very first clip fades in from silence
        else:
            joined = self._tail * self._fade_out + head * self._fade_in
        self._tail = tail.copy()
        return np.concatenate([joined, body])

    # --- producer (the engine's worker) ------------------------------------------------------------------
    def render(self, n: int) -> np.ndarray:
        out = np.zeros((n, self.channels), np.float32)
        got = 0
        while got < n:
            if not len(self._current):
                if self._thread is None:  # no background thread (offline use): render inline
                    self._segments.append(self.next_segment())
                try:
                    self._current = self._segments.popleft()
                except IndexError:
                    self.starved_frames += n - got
                    break
            m = min(n - got, len(self._current))
            out[got:got + m] = self._current[:m]
            self._current = self._current[m:]
            got += m
        self.frames_rendered += n
        return out

    # --- background thread -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="neuralinst-continuous", daemon=True)
        self._thread.start()
        end = time.monotonic() + 10
        while not self._segments and time.monotonic() < end:  # the first segment before playing
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop:
            if len(self._segments) < self.ahead:
                self._segments.append(self.next_segment())
            else:
                time.sleep(0.002)
