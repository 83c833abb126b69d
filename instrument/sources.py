"""Model → blocks: what the engine's producer thread pulls audio from.

A *model* here is anything with the runtime interface of instrument/model.py (`meta`, `reset(seed)`,
`set_control(name, value)`, `generate(n) -> float32 [C, n]`, `step()`), so tests can drive the engine with a small
numpy model and the instrument with an exported ONNX one, through the same code.

`Resampler` turns a model-rate source into device-rate frames, with a 2 ms polyphase FIR for integer ratios
(instrument/upsample.py) or soxr's streaming resampler otherwise (state carries across calls, so block edges never
click). `Program` is one loaded model in one voice mode, with the performer
parameters applied to it by control role.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import soxr

from instrument.errors import UserError
from instrument.params import ROLE_PARAMETERS, LatentMapper, ParamSpec, performer_params
from instrument.upsample import PolyphaseUpsampler

MODES = ("oneshot", "continuous", "stream")
DEFAULT_MODE = {"wavegan": "oneshot", "vrnn": "stream", "samplernn": "stream"}
MODEL_PARAMS = ("temperature", "morph", "drift")  # besides latent.i: parameters the model (not the effects) takes


class ModelStream:
    """A continuous model-rate stream from a runtime model (VRNN, SampleRNN): `render(n) -> [n, C]`."""

    def __init__(self, model):
        self.model = model
        self.sample_rate = int(model.meta.sample_rate)
        self.channels = int(model.meta.channels)
        self.compute_seconds = 0.0  # time spent inside the model, for the real-time factor
        self.frames_rendered = 0

    def render(self, n: int) -> np.ndarray:
        t0 = time.perf_counter()
        audio = self.model.generate(n)
        self.compute_seconds += time.perf_counter() - t0
        self.frames_rendered += n
        return np.ascontiguousarray(np.asarray(audio, dtype=np.float32).T)


RESET_FADE_MS = 2.0  # a stream reset crossfades the old stream into the new one over this long (no click)


class Resampler:
    """Pulls a model-rate source (`render(n) -> [n, C]`) and hands out exact device-rate blocks [frames, out_ch].

    Integer ratios (16 → 48 kHz) use instrument/upsample.py's polyphase FIR (2 ms delay); others soxr's
    streaming resampler (its HQ setting holds back ~21 ms). `restart()` begins a new stream at once: what was
    buffered for the old one is dropped, after a short crossfade from it."""

    def __init__(self, source, out_rate: int, out_channels: int, chunk: int | None = None, quality: str = "HQ"):
        self.source = source
        self.out_rate = int(out_rate)
        self.out_channels = int(out_channels)
        self.ratio = self.out_rate / source.sample_rate
        self._upsampler = None
        self._resampler = None
        if self.out_rate % source.sample_rate == 0 and self.out_rate > source.sample_rate:
            self._upsampler = PolyphaseUpsampler(self.out_rate // source.sample_rate, source.channels)
        elif source.sample_rate != self.out_rate:
            self._resampler = soxr.ResampleStream(source.sample_rate, self.out_rate, source.channels,
                                                  dtype="float32", quality=quality)
        self.chunk = int(chunk or max(32, 256 // max(1, round(self.ratio))))
        self._fifo = np.zeros((0, out_channels), np.float32)
        self._fade_frames = max(1, int(round(RESET_FADE_MS * self.out_rate / 1000)))
        self._fade: np.ndarray | None = None  # the old stream's last frames, still to be faded out
        self._fade_pos = 0
        self._skip = 0  # output frames still to drop: the filter's delay at the start of a new stream

    def _map_channels(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] == self.out_channels:
            return x
        if x.shape[1] == 1:
            return np.repeat(x, self.out_channels, axis=1)
        if x.shape[1] > self.out_channels:
            return x[:, : self.out_channels]
        return np.concatenate([x, np.repeat(x[:, -1:], self.out_channels - x.shape[1], axis=1)], axis=1)

    def _convert(self, x: np.ndarray) -> np.ndarray:
        if self._upsampler is not None:
            return self._upsampler.process(x)
        return x if self._resampler is None else self._resampler.resample_chunk(x)

    def read(self, frames: int) -> np.ndarray:
        while len(self._fifo) < frames:
            y = self._convert(self.source.render(self.chunk))
            if self._skip and len(y):
                drop = min(self._skip, len(y))
                y, self._skip = y[drop:], self._skip - drop
            if len(y):
                self._fifo = np.concatenate([self._fifo, self._map_channels(y)])
        out, self._fifo = self._fifo[:frames], self._fifo[frames:]
        if self._fade is not None:
            out = self._crossfade(out.copy())
        return out

    def restart(self) -> None:
        """Call just before the source restarts (e.g. its model is reset): its next few old frames are kept to
        fade out under the new stream, and everything else buffered for the old stream is dropped."""
        tail = self.read(self._fade_frames).copy()  # the old stream's continuation, before it is forgotten
        self.begin()
        self._fade, self._fade_pos = tail, 0

    def begin(self) -> None:
        """Forget the old stream at once (no fade): the source's next sample is the new stream's first frame.
        The polyphase filter's delay (95 frames at 16 → 48 kHz) is dropped from the new stream's start, so its
        sample 0 comes out first, as in a one-shot clip; soxr's delay stays (it has no exact figure)."""
        self._fifo = self._fifo[:0]
        self._fade = None
        if self._upsampler is not None:
            self._upsampler.reset()
            self._skip = int(round(self._upsampler.delay_frames))
        elif self._resampler is not None:
            self._resampler.clear()

    @property
    def can_snapshot(self) -> bool:
        return self._resampler is None  # soxr's streaming state cannot be copied

    def snapshot(self) -> tuple:
        """Where this resampler stands (buffered frames, filter history, fades), for `restore`."""
        if not self.can_snapshot:
            raise RuntimeError("soxr's streaming resampler cannot be snapshotted")
        hist = None if self._upsampler is None else self._upsampler._history.copy()
        return (self._fifo.copy(), hist, self._skip, self._fade, self._fade_pos)

    def restore(self, snap: tuple) -> None:
        fifo, hist, self._skip, self._fade, self._fade_pos = snap
        self._fifo = fifo.copy()
        if hist is not None:
            self._upsampler._history = hist.copy()

    def _crossfade(self, out: np.ndarray) -> np.ndarray:
        n = min(len(out), len(self._fade) - self._fade_pos)
        k = self._fade_pos + np.arange(n)
        angle = (0.5 * np.pi / len(self._fade)) * (k + 0.5)  # equal power: the two streams are uncorrelated
        out[:n] = out[:n] * np.sin(angle)[:, None] + self._fade[k] * np.cos(angle)[:, None]
        self._fade_pos += n
        if self._fade_pos >= len(self._fade):
            self._fade = None
        return out


def _get(obj: Any, name: str, default=None):
    return getattr(obj, name, default) if obj is not None else default


class Program:
    """One model ready to play in one voice mode: `oneshot` (a latent cache of clips for the voice pool),
    `continuous` (overlap-added WaveGAN clips) or `stream` (VRNN, SampleRNN)."""

    def __init__(self, model, out_rate: int, out_channels: int, preset: Any = None, mode: str | None = None,
                 seed: int = 0, key: str = ""):
        from instrument.voices import ContinuousClips, LatentCache  # voices imports this module's helpers

        self.model = model
        self.meta = model.meta
        self.preset = preset
        self.key = key or str(_get(preset, "name", "") or _get(self.meta, "name", "") or id(model))
        self.mode = mode or _get(preset, "mode") or DEFAULT_MODE.get(self.meta.kind, "stream")
        if self.mode not in MODES:
            raise UserError(f"unknown voice mode {self.mode!r} (expected one of {', '.join(MODES)}).")
        if self.mode != "stream" and self.meta.state:
            # Clips are independent calls: a model that carries state between calls can only stream.
            raise UserError(f"{self.key}: mode {self.mode!r} needs a stateless clip model (WaveGAN); "
                            f"this {self.meta.kind} model streams (mode 'stream').")
        self.out_rate, self.out_channels = int(out_rate), int(out_channels)
        self.seed = int(seed)
        latents = dict(_get(preset, "latents") or {})
        morph = _get(preset, "morph")
        if morph and all(name in latents for name in morph):  # the preset names the two ends of `morph`
            latents = {morph[0]: latents[morph[0]], morph[1]: latents[morph[1]], **latents}
        self.mapper = LatentMapper(self.meta, latents, seed=seed)
        self.params: list[ParamSpec] = performer_params(self.meta, self.mode)
        self.values: dict[str, float] = {p.name: p.default for p in self.params}
        for name, value in (_get(preset, "defaults") or {}).items():
            if name in self.values:
                self.values[name] = float(value)
        self.reset_on_note = bool((_get(preset, "defaults") or {}).get("reset_on_note", False))
        self.cue = None  # a ResetCue (instrument/cue.py) once the engine enables it
        model.reset(self.seed)
        self.cache: LatentCache | None = None
        self.clips: ContinuousClips | None = None
        self.stream: Resampler | None = None
        self.inner = None  # the model-rate source under the resampler (ModelStream or ContinuousClips)
        if self.mode == "oneshot":
            self.cache = LatentCache(model, self.mapper, out_rate, out_channels,
                                     root_note=int(_get(preset, "root_note", 60) or 60))
        elif self.mode == "continuous":
            self.clips = ContinuousClips(model, self.mapper, seed=seed, drift=self.values.get("drift", 0.2))
            self.inner = self.clips
            self.stream = Resampler(self.clips, out_rate, out_channels)
        else:
            self.inner = ModelStream(model)
            self.stream = Resampler(self.inner, out_rate, out_channels)
        for name, value in self.values.items():
            self.set_param(name, value)
        if self.cache is not None:
            self.cache.start()
        if self.clips is not None:
            self.clips.start()

    # --- producer side -----------------------------------------------------------------------------------
    def render(self, frames: int, at: int | None = None) -> np.ndarray | None:
        """Device-rate frames [frames, out_channels], or None when this mode has no stream (oneshot).
        `at`: the ring frame these frames are fed at (the producer's write index), which a pending cued
        reset needs to land exactly."""
        if self.stream is None:
            return None
        if at is not None and self.cue is not None and self.cue.busy:
            return self.cue.render(frames, at)
        return self.stream.read(frames)

    def enable_cue(self, frames: int, fade: int) -> bool:
        """Prepare sample-exact restarts (instrument/cue.py) where this program can have them."""
        from instrument.cue import ResetCue

        if self.cue is not None:
            return True
        if not (self.mode == "stream" and self.reset_on_note and self.stream is not None and self.stream.can_snapshot
                and hasattr(self.model, "snapshot") and hasattr(self.model, "restore")):
            return False
        self.cue = ResetCue(self, frames, fade)
        self.cue.arm()
        return True

    def set_param(self, name: str, value: float) -> None:
        """Apply a model-side parameter (the engine handles volume and effects)."""
        self.values[name] = float(value)
        if name in ROLE_PARAMETERS:  # temperature, grain: the controls of that role
            for c in self.meta.controls_with_role(name):
                self.model_control(c.name, min(max(float(value), c.minimum), c.maximum))
            if self.cue is not None:
                self.cue.invalidate()
        elif name == "drift" and self.clips is not None:
            self.clips.drift = float(value)
        elif self.mapper.set(name, value):
            if self.mode == "stream":
                self.model_control(self.mapper.control.name, self.mapper.vector())
                if self.cue is not None:
                    self.cue.invalidate()
            elif self.cache is not None:
                self.cache.invalidate()
            # continuous: the clip thread reads the mapper for every new clip

    def model_control(self, name: str, value) -> None:
        # In oneshot/continuous mode a background thread owns the model; it applies the latent itself, and
        # temperature-like controls are plain values it reads at its next step.
        self.model.set_control(name, value)

    def reset(self, seed: int | None = None) -> None:
        """Restart the stream now, from the producer (a cued reset, instrument/cue.py, is sample-exact)."""
        new_seed = seed is not None and int(seed) != self.seed
        if seed is not None:
            self.seed = int(seed)
        if self.mode == "stream":
            if self.cue is not None:
                self.cue.cancel()
            if self.stream is not None:
                self.stream.restart()  # before the model forgets: the old stream fades out under the new one
            self._reset_model()
            if self.cue is not None and new_seed:
                self.cue.arm()  # the take was of the old seed's stream

    def begin_fresh(self) -> None:
        """The stream from its seed, at once: what a reset plays, without the fade from the old stream."""
        self.stream.begin()
        self._reset_model()

    def _reset_model(self) -> None:
        self.model.reset(self.seed)
        cue, self.cue = self.cue, None  # re-applying the controls is not a change of them
        try:
            for name, value in self.values.items():
                if name == "temperature" or name.startswith("latent."):
                    self.set_param(name, value)
        finally:
            self.cue = cue

    # --- statistics --------------------------------------------------------------------------------------
    def compute_seconds(self) -> tuple[float, float]:
        """(seconds spent in the model, seconds of model audio produced) so far."""
        src = self.cache or self.inner
        if src is None:
            return 0.0, 0.0
        return src.compute_seconds, src.frames_rendered / self.meta.sample_rate

    def close(self) -> None:
        for part in (self.cache, self.clips):
            if part is not None:
                part.stop()
