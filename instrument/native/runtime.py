"""NativeRuntimeModel: a native loop (instrument/native) behind instrument.model.RuntimeModel's interface.

numpy only; the model-specific part (the C library, its weights) is the `net` it wraps.
"""
from __future__ import annotations

import numpy as np

from instrument.errors import UserError
from instrument.model import RuntimeModel


class NativeRuntimeModel:
    """A native loop behind instrument.model.RuntimeModel's interface: a drop-in second executor.

    Same controls (clamped to their ranges), same seeded noise stream (every noise control drawn from
    `np.random.default_rng(seed)`, in the metadata's order, with its distribution, once per call, like the ONNX
    runtime), same randomised-h0 rule, same `generate` leftovers: with the same seed and controls it plays what
    the ONNX graph plays (up to rounding, and for SampleRNN the rare adjacent-level flip).

    `net` is the model-specific part (NativeSampleRNN, NativeVRNN): `meta`, `path`, `block_size`,
    `initial_state(batch)`, `reset(state)` / `get_state()` for its own batch-1 stream, `run(controls, out)` (one
    call of that stream from [1, ...] control arrays into float32 [block]) and the dict-in/dict-out
    `step(controls, state)` for batches."""

    providers = ["native"]
    device = "cpu"

    def __init__(self, net, batch: int = 1):
        if batch < 1:
            raise UserError("batch must be at least 1.")
        self.net, self.meta, self.batch, self.path = net, net.meta, batch, net.path
        self._controls = {c.name: np.full((batch, *c.shape), c.default, np.float32) for c in self.meta.controls}
        self._noise = [(self._controls[c.name], c.distribution) for c in self.meta.controls if c.role == "noise"]
        noise_std = self.meta.extra.get("initial_state_noise_std", {})
        self._initial_noise = [(s.name, float(noise_std[s.name])) for s in self.meta.state if noise_std.get(s.name)]
        self._initial = net.initial_state(batch)
        self._state = {k: v.copy() for k, v in self._initial.items()}  # used when batch > 1
        self._audio = np.zeros((batch, 1, net.block_size), np.float32)
        self._pos = net.block_size
        self.recoveries = 0
        self.reset(0)

    sample_rate = property(lambda self: self.meta.sample_rate)
    channels = property(lambda self: 1)
    block_size = property(lambda self: self.meta.block_size)

    def reset(self, seed: int | None = 0) -> None:
        self._rng = np.random.default_rng(seed)
        state = {k: v.copy() for k, v in self._initial.items()}
        for name, std in self._initial_noise:
            state[name] = (state[name] + std * self._rng.standard_normal(state[name].shape)).astype(np.float32)
        self.set_state(state)
        self._pos = self.block_size

    def set_control(self, name: str, value) -> None:
        try:
            spec = self.meta.control(name)
        except KeyError:
            names = ", ".join(c.name for c in self.meta.controls)
            raise UserError(f"the model has no control {name!r} (it has: {names}).") from None
        if spec.role == "noise":
            raise UserError(f"control {name!r} is noise drawn by the runtime; use reset(seed) to choose it.")
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise UserError(f"control {name!r} must be finite, got {value!r}.")
        target = self._controls[name]
        try:
            target[...] = np.clip(np.broadcast_to(arr, target.shape), spec.minimum, spec.maximum)
        except ValueError:
            raise UserError(f"control {name!r} takes shape {spec.shape}, got {list(arr.shape)}.") from None

    def get_control(self, name: str) -> np.ndarray:
        return self._controls[name].copy()

    def last_controls(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._controls.items()}

    def get_state(self) -> dict[str, np.ndarray]:
        return self.net.get_state() if self.batch == 1 else {k: v.copy() for k, v in self._state.items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        for s in self.meta.state:
            if np.shape(state[s.name]) != (self.batch, *s.shape):
                raise UserError(f"state {s.name!r} takes shape {[self.batch, *s.shape]}, "
                                f"got {list(np.shape(state[s.name]))}.")
        if self.batch == 1:
            self.net.reset({k: np.asarray(v, np.float32) for k, v in state.items()})
        else:
            self._state = {k: np.array(v, np.float32, copy=True) for k, v in state.items()}

    def snapshot(self) -> dict:
        """As RuntimeModel.snapshot: state, leftover samples and noise generator, for `restore`."""
        return {"state": self.get_state(), "audio": self._audio.copy(), "pos": self._pos,
                "rng": self._rng.bit_generator.state}

    def restore(self, snapshot: dict) -> None:
        self.set_state(snapshot["state"])
        self._audio[...] = snapshot["audio"]
        self._pos = snapshot["pos"]
        self._rng.bit_generator.state = snapshot["rng"]

    def _run(self) -> None:
        for arr, distribution in self._noise:
            if distribution == "normal":
                self._rng.standard_normal(dtype=np.float32, out=arr)
            else:
                self._rng.random(dtype=np.float32, out=arr)
        if self.batch == 1:
            self.net.run(self._controls, self._audio[0, 0])
        else:
            self._audio[...], self._state = self.net.step(self._controls, self._state)
        if not np.isfinite(self._audio).all():  # as the ONNX runtime: silence, and restart the stream
            self._audio[...] = 0.0
            self.set_state(self._initial)
            self.recoveries += 1

    def step(self) -> np.ndarray:
        self._run()
        self._pos = self.block_size
        return self._audio.copy()

    # the same block bookkeeping as the graph's runtime (it reads block_size, meta.channels, _run, _pos, _audio)
    generate = RuntimeModel.generate
    generate_batch = RuntimeModel.generate_batch
