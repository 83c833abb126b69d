"""Performer parameters (docs/DESIGN.md §4) and how they reach a model: by control role, never by model kind.

Names: `temperature`, `grain`, `latent.0` … `latent.7`, `morph`, `drift`, `volume`, `filter.cutoff`, `delay.send`,
`reverb.send`, `fx.<name>.bypass`. Values are in each parameter's own range (`ParamSpec.minimum..maximum`); the
MIDI/UI layer maps a controller onto that range (`ParamSpec.from_unit`).

Latent knobs: `latent.i` moves the model's latent along a fixed direction. The directions are orthonormal and drawn
from a fixed seed, so the same knob does the same thing every session and on every machine.
    role `latent`        (WaveGAN z):        z = (1-morph)·a + morph·b + scale·Σ knob_i·d_i, clipped to the range
    role `latent_offset` (VRNN z_offset):    offset = scale·Σ knob_i·d_i
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from instrument.meta import ModelMeta

N_LATENT_KNOBS = 8
DIRECTION_SEED = 20260101
EFFECT_NAMES = ("filter", "delay", "reverb", "limiter")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    minimum: float
    maximum: float
    default: float
    unit: str = ""
    scale: str = "linear"  # "linear" | "log" (how a 0..1 controller maps onto the range)
    doc: str = ""

    def clamp(self, value: float) -> float:
        v = float(value)
        if v != v:  # NaN passes min/max untouched (every comparison with it is false): it means "no value"
            return self.default
        return min(max(v, self.minimum), self.maximum)

    def from_unit(self, u: float) -> float:
        """A controller position 0..1 → a value in range."""
        u = float(u)
        if u != u:
            return self.default
        u = min(max(u, 0.0), 1.0)
        if self.scale == "log":
            return self.minimum * (self.maximum / self.minimum) ** u
        return self.minimum + u * (self.maximum - self.minimum)

    def to_unit(self, value: float) -> float:
        v = self.clamp(value)
        if self.scale == "log":
            return math.log(v / self.minimum) / math.log(self.maximum / self.minimum)
        span = self.maximum - self.minimum
        return (v - self.minimum) / span if span else 0.0


def performer_params(meta: ModelMeta | None = None, mode: str = "stream") -> list[ParamSpec]:
    """The parameters that make sense for a model (those its controls can carry), in display order."""
    specs: list[ParamSpec] = []
    temps = meta.controls_with_role("temperature") if meta else []
    if temps:
        t = temps[0]
        specs.append(ParamSpec("temperature", t.minimum, t.maximum, t.default, doc="sampling temperature"))
    grains = meta.controls_with_role("grain") if meta else []
    if grains:
        g = grains[0]
        specs.append(ParamSpec("grain", g.minimum, g.maximum, g.default,
                               doc="how much of the model's own output noise is heard (VRNN: 0 the decoder mean, "
                                   "1 the drawn frame)"))
    has_latent = bool(meta and (meta.controls_with_role("latent") or meta.controls_with_role("latent_offset")))
    if has_latent:
        for i in range(N_LATENT_KNOBS):
            specs.append(ParamSpec(f"latent.{i}", -1.0, 1.0, 0.0, doc=f"move the latent along direction {i}"))
    if meta and meta.controls_with_role("latent"):
        specs.append(ParamSpec("morph", 0.0, 1.0, 0.0, doc="blend between the preset's two saved latents"))
        if mode == "continuous":
            specs.append(ParamSpec("drift", 0.0, 1.0, 0.2, doc="how fast the latent wanders between clips"))
    specs += [
        ParamSpec("volume", 0.0, 1.0, 0.8, doc="output gain"),
        ParamSpec("filter.cutoff", 40.0, 20000.0, 20000.0, "Hz", "log", "low-pass cutoff"),
        ParamSpec("delay.send", 0.0, 1.0, 0.0, doc="send to the feedback delay"),
        ParamSpec("reverb.send", 0.0, 1.0, 0.0, doc="send to the reverb"),
    ]
    for fx in EFFECT_NAMES:
        specs.append(ParamSpec(f"fx.{fx}.bypass", 0.0, 1.0, 0.0, doc=f"1 bypasses the {fx}"))
    return specs


# Performer parameters that set the model's controls of the role of the same name (sources.Source.set_param).
ROLE_PARAMETERS = ("temperature", "grain")


def apply_role_defaults(model, values: dict) -> None:
    """Set `model`'s controls from the ROLE_PARAMETERS among `values` (a preset's defaults: the sound `play`
    starts with), clamped to each control's range by the runtime. Used by `render` and `eval`."""
    for role in ROLE_PARAMETERS:
        if role in values:
            for c in model.meta.controls_with_role(role):
                model.set_control(c.name, float(values[role]))


def orthonormal_directions(size: int, count: int = N_LATENT_KNOBS, seed: int = DIRECTION_SEED) -> np.ndarray:
    """`count` fixed orthonormal directions in R^size ([count, size]); fewer if size < count."""
    count = min(count, size)
    g = np.random.default_rng(seed)
    q, r = np.linalg.qr(g.standard_normal((size, count)))
    q *= np.sign(np.diag(r))  # make the factorisation unique, so the directions never flip between numpy builds
    return q.T.astype(np.float32)


class LatentMapper:
    """Turns knob values into the model's latent control (role `latent`) or latent offset (role `latent_offset`)."""

    def __init__(self, meta: ModelMeta, latents: dict[str, list[float]] | None = None, scale: float = 2.0,
                 seed: int = 0):
        self.control = None
        self.role = None
        for role in ("latent", "latent_offset"):
            found = meta.controls_with_role(role)
            if found:
                self.control, self.role = found[0], role
                break
        self.knobs = np.zeros(N_LATENT_KNOBS, dtype=np.float32)
        self.morph = 0.0
        self.scale = float(scale)
        if self.control is None:
            return
        size = math.prod(self.control.shape)
        self.size = size
        self.directions = orthonormal_directions(size)
        # The two ends of `morph`: the preset's first two saved latents, else two fixed random draws.
        saved = [np.asarray(v, dtype=np.float32).reshape(-1) for v in (latents or {}).values()]
        saved = [v for v in saved if v.size == size]
        g = np.random.default_rng(seed)
        lo, hi = self.control.minimum, self.control.maximum
        while len(saved) < 2:
            saved.append(g.uniform(lo, hi, size).astype(np.float32) if self.role == "latent"
                         else np.zeros(size, np.float32))
        self.a, self.b = saved[0], saved[1]

    @property
    def active(self) -> bool:
        return self.control is not None

    def set(self, name: str, value: float) -> bool:
        """Apply a knob; True if it changes the latent."""
        if not self.active:
            return False
        if name == "morph":
            self.morph = min(max(float(value), 0.0), 1.0)
            return self.role == "latent"
        if name.startswith("latent."):
            i = int(name.split(".", 1)[1])
            if 0 <= i < len(self.directions):
                self.knobs[i] = float(value)
                return True
        return False

    def vector(self) -> np.ndarray:
        offset = self.scale * (self.knobs[: len(self.directions)] @ self.directions)
        if self.role == "latent":
            z = (1.0 - self.morph) * self.a + self.morph * self.b + offset
            z = np.clip(z, self.control.minimum, self.control.maximum)
        else:
            z = offset
        return z.astype(np.float32).reshape(self.control.shape)


class Smoother:
    """Per-block linear ramps toward a target: no zipper noise, computed outside the audio callback."""

    def __init__(self, value: float, frames: int):
        self.value = float(value)
        self.target = float(value)
        self._lin = (np.arange(1, frames + 1, dtype=np.float32) / frames)[:, None]

    def ramp(self, frames: int) -> np.ndarray | float:
        """A [frames, 1] gain ramp from the current value to the target (or a float when settled)."""
        start, end = self.value, self.target
        self.value = end
        if start == end:
            return end
        return start + (end - start) * self._lin[:frames]
