"""NativeSampleRNN: the C sample loop (samplernn.c) behind the streaming contract, for the runtime.

    net = NativeSampleRNN("model.srnn.npz")            # written by export/native_weights.py
    state = net.initial_state(batch)                   # same names and shapes as the ONNX graph's state
    audio, state = net.step({"temperature": t, "noise": u}, state)   # audio [B, 1, block]

or, for one stream with the state kept inside (no state copies per call):

    net.reset(state=None)                              # learned h0 and silence, or a given state (batch 1)
    net.generate_frame(temperature, noise, out)        # out: float32 [block], noise: float32 [block]

or as the runtime's second executor, with instrument.model.RuntimeModel's interface (reset(seed), set_control,
generate(n), step(), get_state/set_state):

    model = load_native_model("model.srnn.npz")       # NativeRuntimeModel (instrument/native/runtime.py)

numpy and ctypes only (no torch). The library is built by instrument/native/build.py (./dev setup runs it);
if it is missing, the constructor builds it or raises UserError.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from instrument.errors import UserError
from instrument.meta import ModelMeta
from instrument.native.runtime import NativeRuntimeModel

MAX_TIERS, MAX_LAYERS, MAX_HIDDEN = 8, 8, 8
ABI_VERSION = 3
FORMAT_VERSION = 1
# header[7]: how the streamed matrices are stored (export/native_weights.py)
STORAGE_FLOAT32, STORAGE_FLOAT16, STORAGE_INT8 = 0, 1, 2

_FP = ctypes.POINTER(ctypes.c_float)
_IP = ctypes.POINTER(ctypes.c_int)


class _Model(ctypes.Structure):
    _fields_ = [
        ("n_tiers", ctypes.c_int), ("n_rnn", ctypes.c_int), ("dim", ctypes.c_int), ("q", ctypes.c_int),
        ("n_hidden", ctypes.c_int), ("lstm", ctypes.c_int), ("skip", ctypes.c_int),
        ("frame_size", ctypes.c_int * MAX_TIERS), ("n_frame_samples", ctypes.c_int * MAX_TIERS),
        ("expand_w", _FP * MAX_TIERS), ("expand_b", _FP * MAX_TIERS),
        ("w_ih", (_FP * MAX_LAYERS) * MAX_TIERS), ("b_ih", (_FP * MAX_LAYERS) * MAX_TIERS),
        ("w_hh", (_FP * MAX_LAYERS) * MAX_TIERS), ("b_hh", (_FP * MAX_LAYERS) * MAX_TIERS),
        ("skip_w", (_FP * MAX_LAYERS) * MAX_TIERS), ("skip_b", _FP * MAX_TIERS),
        ("up_w", _FP * MAX_TIERS), ("up_b", _FP * MAX_TIERS),
        ("tables", _FP),
        ("hid_w", _FP * MAX_HIDDEN), ("hid_b", _FP * MAX_HIDDEN),
        ("out_w", _FP), ("out_b", _FP), ("dequant", _FP), ("frame_in", _FP),
        ("half", ctypes.c_int),  # 1: the streamed matrices are float16
        ("int8", ctypes.c_int),  # 1: they are int8 with per-row scales (quantised at load: NativeSampleRNN(int8=True))
        ("w_ih_s", (_FP * MAX_LAYERS) * MAX_TIERS), ("w_hh_s", (_FP * MAX_LAYERS) * MAX_TIERS),
        ("skip_w_s", (_FP * MAX_LAYERS) * MAX_TIERS), ("up_w_s", _FP * MAX_TIERS),
        ("hid_w_s", _FP * MAX_HIDDEN), ("out_w_s", _FP),
    ]


ALIGN = 64  # bytes: a cache line, and more than any vector load needs


def aligned_zeros(shape, dtype=np.float32) -> np.ndarray:
    """Zeros whose data starts on an ALIGN-byte boundary. Every array the C loop reads or writes is allocated so:
    with -O3 -ffast-math the compiler may peel a loop's first iterations up to an aligned address, and how many it
    peels changes the order of a dot product's sum, so the same model loaded twice could round (and so sample)
    differently. Aligned buffers make a load's results depend on the model and noise only."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(n * dtype.itemsize + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    out = aligned_zeros(a.shape, a.dtype)
    out[...] = a
    return out


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one float32 scale per row (the last axis): w ≈ q * scale. Returns (q, scale)."""
    w32 = np.asarray(w, np.float32).reshape(-1, w.shape[-1])
    peak = np.abs(w32).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w32 / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scale.reshape(w.shape[:-1])


def load_library() -> ctypes.CDLL:
    """The compiled loop (built on first use if the source is newer or the library is missing)."""
    from instrument.native import build

    return build.load("the native SampleRNN loop", "srnn_abi_version", ABI_VERSION, {
        "srnn_workspace_floats": ([ctypes.POINTER(_Model)], ctypes.c_size_t),
        "srnn_frame": ([ctypes.POINTER(_Model), _FP, _FP, _FP, _FP, ctypes.c_float, _IP, _FP, _FP, _IP, _FP],
                       ctypes.c_int),
    })


def _ptr(a: np.ndarray | None, kind=_FP):
    return None if a is None else a.ctypes.data_as(kind)


class NativeSampleRNN:
    """A SampleRNN weights file driven by the C loop, with the ONNX graph's initial_state/step semantics."""

    def __init__(self, weights_path: str | Path, int8: bool = False):
        """int8=True quantises float32/float16 matrices to int8 as they are loaded (what a file exported with
        int8 storage holds already; for trying it on any weights: the model is then not the one torch plays)."""
        path = Path(weights_path)
        self._quantise = bool(int8)  # float matrices to int8 as they are loaded
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise UserError(f"{path}: no such native weights file.") from None
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a native SampleRNN weights file ({e}).") from None
        if "format_version" not in arrays or int(arrays["format_version"][0]) != FORMAT_VERSION:
            raise UserError(f"{path}: unknown native weights format; re-export it with export/native_weights.py.")
        self.path = path
        self.meta = ModelMeta.from_json(bytes(arrays["meta_json"]).decode("utf-8"), str(path))
        self._lib = load_library()
        self._keep: list[np.ndarray] = []  # the struct points into these arrays: keep them alive
        self._m = self._describe(arrays, path)
        self.block_size = int(self._m.n_frame_samples[self._m.n_tiers - 1])
        self.half, self.int8 = bool(self._m.half), bool(self._m.int8)
        self.sample_rate = self.meta.sample_rate
        if self.block_size != self.meta.block_size:
            raise UserError(f"{path}: its tiers give {self.block_size}-sample frames, its metadata says "
                            f"{self.meta.block_size}.")
        m = self._m
        n_state = m.n_tiers * m.n_rnn * m.dim
        # two sets of state buffers: the hot path's own stream, and scratch for the dict-in/dict-out `step`
        self._streams = []
        for _ in range(2):
            h = aligned_zeros(n_state)
            c = aligned_zeros(n_state) if m.lstm else None
            samples = aligned_zeros(self.block_size)
            self._streams.append((h, c, samples, (ctypes.byref(m), _ptr(h), _ptr(c), _ptr(samples))))
        self._levels = aligned_zeros(self.block_size, np.int32)
        self._work = aligned_zeros(self._lib.srnn_workspace_floats(ctypes.byref(m)))
        self.reset()

    # --- loading --------------------------------------------------------------------------------------------
    def _array(self, arrays, name, shape, path, dtype=np.float32) -> np.ndarray:
        if name not in arrays:
            raise UserError(f"{path}: the native weights lack {name!r}.")
        if arrays[name].dtype != dtype:
            raise UserError(f"{path}: {name!r} is {arrays[name].dtype}, expected {np.dtype(dtype).name}.")
        a = aligned_copy(arrays[name])
        if list(a.shape) != list(shape):
            raise UserError(f"{path}: {name!r} has shape {list(a.shape)}, expected {list(shape)}.")
        self._keep.append(a)
        return a

    def _matrix(self, arrays, name, shape, path, storage):
        """A streamed matrix: its pointer and, when int8, its per-row scales' pointer."""
        if storage == STORAGE_INT8:
            q = self._array(arrays, name, shape, path, np.int8)
            return q.ctypes.data_as(_FP), _ptr(self._array(arrays, name + ".scale", shape[:-1], path))
        a = self._array(arrays, name, shape, path, np.float16 if storage == STORAGE_FLOAT16 else np.float32)
        if not self._quantise:
            return _ptr(a), None
        q, scale = (aligned_copy(x) for x in quantize_rows(a))
        self._keep += [q, scale]
        return q.ctypes.data_as(_FP), _ptr(scale)

    def _describe(self, arrays, path) -> _Model:
        try:
            header = [int(v) for v in arrays["header"]]
            n_tiers, n_rnn, dim, q, n_hidden, lstm, skip = header[:7]
            storage = header[7] if len(header) > 7 else STORAGE_FLOAT32
            frame_sizes = [int(v) for v in arrays["frame_sizes"]]
            nfs = [int(v) for v in arrays["n_frame_samples"]]
        except (KeyError, ValueError):
            raise UserError(f"{path}: the native weights header is missing or malformed.") from None
        if storage not in (STORAGE_FLOAT32, STORAGE_FLOAT16, STORAGE_INT8):
            raise UserError(f"{path}: the native weights header names an unknown storage ({storage}).")
        if not (1 <= n_tiers <= MAX_TIERS and 1 <= n_rnn <= MAX_LAYERS and 0 <= n_hidden <= MAX_HIDDEN
                and 1 <= dim <= 8192 and 2 <= q <= 65536 and len(frame_sizes) == n_tiers == len(nfs)):
            raise UserError(f"{path}: the native weights header describes an unsupported model.")
        if any(n != int(np.prod(frame_sizes[: i + 1])) for i, n in enumerate(nfs)):
            raise UserError(f"{path}: frame sizes and frame lengths disagree.")
        m = _Model(n_tiers=n_tiers, n_rnn=n_rnn, dim=dim, q=q, n_hidden=n_hidden, lstm=lstm, skip=skip,
                   half=int(storage == STORAGE_FLOAT16 and not self._quantise),
                   int8=int(storage == STORAGE_INT8 or self._quantise))
        wt = storage  # the streamed matrices' storage
        gates = 4 if lstm else 3
        for i in range(n_tiers):
            m.frame_size[i], m.n_frame_samples[i] = frame_sizes[i], nfs[i]
            p = f"tier{i}."
            m.expand_w[i] = _ptr(self._array(arrays, p + "expand_w", (dim, nfs[i]), path))
            m.expand_b[i] = _ptr(self._array(arrays, p + "expand_b", (dim,), path))
            for l in range(n_rnn):
                m.w_ih[i][l], m.w_ih_s[i][l] = self._matrix(arrays, p + f"w_ih{l}", (gates * dim, dim), path, wt)
                m.b_ih[i][l] = _ptr(self._array(arrays, p + f"b_ih{l}", (gates * dim,), path))
                m.w_hh[i][l], m.w_hh_s[i][l] = self._matrix(arrays, p + f"w_hh{l}", (gates * dim, dim), path, wt)
                m.b_hh[i][l] = _ptr(self._array(arrays, p + f"b_hh{l}", (gates * dim,), path))
                if skip:
                    m.skip_w[i][l], m.skip_w_s[i][l] = self._matrix(arrays, p + f"skip_w{l}", (dim, dim), path, wt)
            if skip:
                m.skip_b[i] = _ptr(self._array(arrays, p + "skip_b", (dim,), path))
            m.up_w[i], m.up_w_s[i] = self._matrix(arrays, p + "up_w", (frame_sizes[i], dim, dim), path, wt)
            m.up_b[i] = _ptr(self._array(arrays, p + "up_b", (frame_sizes[i], dim), path))
        m.tables = _ptr(self._array(arrays, "mlp.tables", (frame_sizes[0], q, dim), path))
        for l in range(n_hidden):
            m.hid_w[l], m.hid_w_s[l] = self._matrix(arrays, f"mlp.hid_w{l}", (dim, dim), path, wt)
            m.hid_b[l] = _ptr(self._array(arrays, f"mlp.hid_b{l}", (dim,), path))
        m.out_w, m.out_w_s = self._matrix(arrays, "mlp.out_w", (q, dim), path, wt)
        m.out_b = _ptr(self._array(arrays, "mlp.out_b", (q,), path))
        m.dequant = _ptr(self._array(arrays, "dequant", (q,), path))
        m.frame_in = _ptr(self._array(arrays, "frame_in", (q,), path))
        return m

    # --- the streaming contract (state dicts in and out, like the ONNX graph) ------------------------------
    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        init = self.meta.extra.get("initial_state", {})
        out = {}
        for spec in self.meta.state:
            one = np.asarray(init[spec.name], np.float32).reshape(spec.shape) if spec.name in init \
                else np.zeros(spec.shape, np.float32)
            out[spec.name] = np.repeat(one[None], batch, axis=0)
        return out

    HOT, SCRATCH = 0, 1

    def _load(self, state, b, stream):
        h, c, samples, _ = self._streams[stream]
        m, n = self._m, self._m.n_rnn * self._m.dim
        for i in range(m.n_tiers):
            h[i * n:(i + 1) * n] = state[f"tier{i}.h"][b].reshape(-1)
            if m.lstm:
                c[i * n:(i + 1) * n] = state[f"tier{i}.c"][b].reshape(-1)
        samples[:] = state["samples"][b]

    def _store(self, state, b, stream):
        h, c, samples, _ = self._streams[stream]
        m, n = self._m, self._m.n_rnn * self._m.dim
        for i in range(m.n_tiers):
            state[f"tier{i}.h"][b] = h[i * n:(i + 1) * n].reshape(m.n_rnn, m.dim)
            if m.lstm:
                state[f"tier{i}.c"][b] = c[i * n:(i + 1) * n].reshape(m.n_rnn, m.dim)
        state["samples"][b] = samples

    def _call(self, stream, temperature, noise, forced, logits, audio) -> None:
        rc = self._lib.srnn_frame(*self._streams[stream][3], _ptr(noise), float(temperature), _ptr(forced, _IP),
                                  _ptr(logits), _ptr(audio), _ptr(self._levels, _IP), _ptr(self._work))
        if rc != 0:
            raise UserError(f"{self.path}: the native loop refused the model description.")

    def step(self, controls: dict[str, np.ndarray], state: dict[str, np.ndarray]):
        """audio [B, 1, block], next state: one top-tier frame per stream (the input state is not modified)."""
        noise = np.ascontiguousarray(controls["noise"], np.float32)
        if noise.ndim != 2 or noise.shape[1] != self.block_size:
            raise ValueError(f"noise must be [batch, {self.block_size}], got {list(noise.shape)}")
        batch = noise.shape[0]
        temperature = np.broadcast_to(np.asarray(controls.get("temperature", 1.0), np.float32), (batch,))
        new = {k: np.array(v, np.float32, copy=True) for k, v in state.items()}
        audio = np.zeros((batch, 1, self.block_size), np.float32)
        for b in range(batch):
            self._load(new, b, self.SCRATCH)
            self._call(self.SCRATCH, temperature[b], noise[b], None, None, audio[b, 0])
            self._store(new, b, self.SCRATCH)
        return audio, new

    def step_teacher_forced(self, levels: np.ndarray, state: dict[str, np.ndarray]):
        """Feed given levels [B, block] instead of sampling: logits [B, block, q] and the next state."""
        levels = np.ascontiguousarray(levels, np.int32)
        if levels.ndim != 2 or levels.shape[1] != self.block_size:
            raise ValueError(f"levels must be [batch, {self.block_size}], got {list(levels.shape)}")
        batch, q = levels.shape[0], self._m.q
        new = {k: np.array(v, np.float32, copy=True) for k, v in state.items()}
        logits = np.zeros((batch, self.block_size, q), np.float32)
        audio = np.zeros(self.block_size, np.float32)
        noise = np.zeros(self.block_size, np.float32)
        for b in range(batch):
            self._load(new, b, self.SCRATCH)
            self._call(self.SCRATCH, 1.0, noise, levels[b], logits[b], audio)
            self._store(new, b, self.SCRATCH)
        return logits, new

    # --- one stream, state kept inside (the runtime's hot path) ---------------------------------------------
    def reset(self, state: dict[str, np.ndarray] | None = None) -> None:
        self._load(state if state is not None else self.initial_state(1), 0, self.HOT)

    def get_state(self) -> dict[str, np.ndarray]:
        out = self.initial_state(1)
        self._store(out, 0, self.HOT)
        return out

    def generate_frame(self, temperature: float, noise: np.ndarray, out: np.ndarray) -> None:
        """Write one frame of audio into `out` (float32 [block], C-contiguous); noise: float32 [block] in [0, 1)."""
        for a in (noise, out):  # the C loop reads and writes raw memory: refuse anything of the wrong layout
            if a.dtype != np.float32 or a.shape != (self.block_size,) or not a.flags.c_contiguous:
                raise ValueError(f"noise and out must be C-contiguous float32 [{self.block_size}]")
        self._call(self.HOT, temperature, noise, None, None, out)

    def run(self, controls: dict[str, np.ndarray], out: np.ndarray) -> None:
        """The runtime's hot path (instrument/native/runtime.py): one frame of stream 0 from [1, ...] controls."""
        self.generate_frame(float(controls["temperature"][0]), controls["noise"][0], out)

    @property
    def last_levels(self) -> np.ndarray:
        """The quantisation levels of the last generated frame (int32 [block])."""
        return self._levels


def load_native_model(path: str | Path, batch: int = 1) -> NativeRuntimeModel:
    """A native weights file (.npz from export/native_weights.py) as a RuntimeModel-like object."""
    return NativeRuntimeModel(NativeSampleRNN(path), batch)
