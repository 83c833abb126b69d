"""NativeVRNN: the C VRNN step (vrnn.c) behind the streaming contract, for the runtime.

    net = NativeVRNN("model.native.npz")                # written by export/native_weights.py (vrnn_native_arrays)
    state = net.initial_state(batch)                    # {"h": [B, h_dim]}, as the ONNX graph's state
    audio, state = net.step(controls, state)            # controls: temperature, z_offset, grain, eps_z, eps_x

or as the runtime's second executor (instrument/native/runtime.py, RuntimeModel's interface):

    model = load_native_model("model.native.npz")      # NativeRuntimeModel

The file holds each product's matrix as float32 or as int8 with one scale per row, row-major; the int8 ones are
packed here, at load, into the tiles the C step streams (4 rows x 16 columns per 64-byte line), so the file format
does not depend on the kernel's layout. numpy and ctypes only (no torch).
"""
from __future__ import annotations

import ctypes
import zipfile
from pathlib import Path

import numpy as np

from instrument.errors import UserError
from instrument.meta import ModelMeta
from instrument.native.runtime import NativeRuntimeModel
from instrument.native.samplernn import aligned_copy, aligned_zeros

MAX_LAYERS = 8
ABI_VERSION = 2
FORMAT_VERSION = 1
KIND = "vrnn"  # the file's `kind` array: a SampleRNN file has none


class _Linear(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int), ("cols", ctypes.c_int), ("int8", ctypes.c_int),
                ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


class _Model(ctypes.Structure):
    _fields_ = [
        ("frame", ctypes.c_int), ("h_dim", ctypes.c_int), ("z_dim", ctypes.c_int), ("n_layers", ctypes.c_int),
        ("data_mean", ctypes.c_float), ("data_std", ctypes.c_float), ("min_std", ctypes.c_float),
        ("prior", _Linear * MAX_LAYERS), ("prior_mean", _Linear), ("prior_std", _Linear),
        ("phi_z", _Linear),
        ("dec_z", _Linear), ("dec_h", _Linear), ("dec", _Linear * MAX_LAYERS),
        ("dec_mean", _Linear), ("dec_std", _Linear),
        ("phi_x", _Linear * MAX_LAYERS),
        ("gru_x", _Linear), ("gru_z", _Linear), ("gru_h", _Linear),
    ]


def layer_shapes(frame: int, h_dim: int, z_dim: int, n_layers: int, widths: dict[str, int]) -> dict[str, tuple]:
    """name -> (rows, cols, has_bias) of every product of the step, in the file's naming (vrnn_native_arrays)."""
    x, zf, dec, prior = widths["x_feat_dim"], widths["z_feat_dim"], widths["dec_dim"], widths["prior_dim"]
    shapes = {}
    for l in range(n_layers):
        shapes[f"prior{l}"] = (prior, h_dim if l == 0 else prior, True)
        shapes[f"phi_x{l}"] = (x, frame if l == 0 else x, True)
        if l:
            shapes[f"dec{l}"] = (dec, dec, True)
    shapes.update({
        "prior_mean": (z_dim, prior, True), "prior_std": (z_dim, prior, True), "phi_z": (zf, z_dim, True),
        "dec_z": (dec, zf, True), "dec_h": (dec, h_dim, False), "dec_mean": (frame, dec, True),
        "dec_std": (frame, dec, True), "gru_x": (3 * h_dim, x, True), "gru_z": (3 * h_dim, zf, False),
        "gru_h": (3 * h_dim, h_dim, True),
    })
    return shapes


def pack_tiles(q: np.ndarray) -> np.ndarray:
    """int8 [rows, cols] -> the C step's tiles [rows/4][cols/16][4][16] (zero-padded to whole tiles)."""
    rows, cols = q.shape
    rp, cp = -(-rows // 4) * 4, -(-cols // 16) * 16
    padded = np.zeros((rp, cp), np.int8)
    padded[:rows, :cols] = q
    return aligned_copy(np.ascontiguousarray(padded.reshape(rp // 4, 4, cp // 16, 16).transpose(0, 2, 1, 3)))


def load_library() -> ctypes.CDLL:
    """The compiled step (built on first use if a source is newer or the library is missing)."""
    from instrument.native import build

    return build.load("the native VRNN step", "vn_abi_version", ABI_VERSION, {
        "vn_workspace_floats": ([ctypes.POINTER(_Model)], ctypes.c_size_t),
        "vn_step": ([ctypes.POINTER(_Model), ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_float,
                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int),
    })


def is_vrnn_weights(arrays) -> bool:
    return "kind" in arrays and bytes(arrays["kind"]).decode("utf-8", "replace") == KIND


class NativeVRNN:
    """A VRNN native weights file driven by the C step, with the ONNX graph's initial_state/step semantics."""

    def __init__(self, weights_path: str | Path):
        path = Path(weights_path)
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise UserError(f"{path}: no such native weights file.") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"{path}: not a native VRNN weights file ({e}).") from None
        if not is_vrnn_weights(arrays):
            raise UserError(f"{path}: not a native VRNN weights file (no VRNN kind marker).")
        if "format_version" not in arrays or int(arrays["format_version"][0]) != FORMAT_VERSION:
            raise UserError(f"{path}: unknown native weights format; re-export it with `neuralinst export`.")
        self.path = path
        self.meta = ModelMeta.from_json(bytes(arrays["meta_json"]).decode("utf-8"), str(path))
        self._lib = load_library()
        self._keep: list[np.ndarray] = []  # the struct points into these arrays: keep them alive
        self._m = self._describe(arrays, path)
        m = self._m
        self.frames_per_call = self.meta.block_size // m.frame
        if self.frames_per_call * m.frame != self.meta.block_size or self.meta.kind != KIND:
            raise UserError(f"{path}: its metadata does not describe a VRNN of {m.frame}-sample frames.")
        self.block_size = self.meta.block_size
        self.int8_products = sum(1 for lin in self._linears() if lin.int8)
        self._h = aligned_zeros(m.h_dim)  # the hot path's own stream
        self._scratch_h = aligned_zeros(m.h_dim)
        self._work = aligned_zeros(self._lib.vn_workspace_floats(ctypes.byref(m)))
        self._mref = ctypes.byref(m)

    def _linears(self) -> list[_Linear]:
        m = self._m
        return [getattr(m, f[0]) for f in _Model._fields_ if f[1] is _Linear] + \
            [layer for f in ("prior", "dec", "phi_x") for layer in getattr(m, f)[:m.n_layers] if layer.rows]

    def _vector(self, arrays, name, n, path) -> np.ndarray:
        a = arrays.get(name)
        if a is None or a.dtype != np.float32 or a.shape != (n,):
            raise UserError(f"{path}: {name!r} is missing or not float32 [{n}].")
        a = aligned_copy(a)
        self._keep.append(a)
        return a

    def _linear(self, arrays, name, rows, cols, has_bias, path) -> _Linear:
        w = arrays.get(f"{name}.w")
        if w is None or w.shape != (rows, cols) or w.dtype not in (np.float32, np.int8):
            raise UserError(f"{path}: {name}.w is missing or not a [{rows}, {cols}] float32/int8 matrix.")
        lin = _Linear(rows=rows, cols=cols, int8=int(w.dtype == np.int8))
        if lin.int8:
            scale = np.ones(-(-rows // 4) * 4, np.float32)  # whole tiles: the padding rows' scale is never used
            scale[:rows] = self._vector(arrays, f"{name}.scale", rows, path)
            packed, scale = pack_tiles(w), aligned_copy(scale)
            self._keep += [packed, scale]
            lin.w, lin.scale = packed.ctypes.data, scale.ctypes.data
        else:
            a = aligned_copy(np.ascontiguousarray(w))
            self._keep.append(a)
            lin.w = a.ctypes.data
        if has_bias:
            lin.bias = self._vector(arrays, f"{name}.b", rows, path).ctypes.data
        return lin

    def _describe(self, arrays, path) -> _Model:
        try:
            frame, h_dim, z_dim, n_layers, play_mean, x_feat, z_feat, dec, prior = (int(v) for v in arrays["header"])
            data_mean, data_std, min_std = (float(v) for v in arrays["floats"])
        except (KeyError, ValueError):
            raise UserError(f"{path}: the native weights header is missing or malformed.") from None
        if not (1 <= n_layers <= MAX_LAYERS and all(1 <= d <= 16384 for d in (frame, h_dim, z_dim, x_feat, z_feat,
                                                                              dec, prior))):
            raise UserError(f"{path}: the native weights header describes an unsupported model.")
        if not (np.isfinite([data_mean, data_std, min_std]).all() and data_std > 0):
            raise UserError(f"{path}: the native weights carry unusable data statistics.")
        self.default_grain = 0.0 if play_mean else 1.0  # the torch model's rule, for callers that leave grain out
        m = _Model(frame=frame, h_dim=h_dim, z_dim=z_dim, n_layers=n_layers,
                   data_mean=data_mean, data_std=data_std, min_std=min_std)
        widths = {"x_feat_dim": x_feat, "z_feat_dim": z_feat, "dec_dim": dec, "prior_dim": prior}
        for name, (rows, cols, bias) in layer_shapes(frame, h_dim, z_dim, n_layers, widths).items():
            lin = self._linear(arrays, name, rows, cols, bias, path)
            base = name.rstrip("0123456789")
            if base in ("prior", "dec", "phi_x"):
                getattr(m, base)[int(name[len(base):])] = lin
            else:
                setattr(m, name, lin)
        return m

    # --- the streaming contract (state dicts in and out, like the ONNX graph) ------------------------------
    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {"h": np.zeros((batch, self._m.h_dim), np.float32)}

    def _call(self, h: np.ndarray, temperature: float, z_offset: np.ndarray, grain: float, eps_z: np.ndarray,
              eps_x: np.ndarray, audio: np.ndarray) -> None:
        """One call (frames_per_call frames) of one stream; every array float32 C-contiguous, h updated in place."""
        frame, z = self._m.frame, self._m.z_dim
        zo, ez, ex, out = z_offset.ctypes.data, eps_z.ctypes.data, eps_x.ctypes.data, audio.ctypes.data
        for i in range(self.frames_per_call):
            rc = self._lib.vn_step(self._mref, h.ctypes.data, temperature, zo, grain, ez + 4 * i * z,
                                   ex + 4 * i * frame, out + 4 * i * frame, self._work.ctypes.data)
            if rc != 0:
                raise UserError(f"{self.path}: the native step refused the model description.")

    def step(self, controls: dict[str, np.ndarray], state: dict[str, np.ndarray]):
        """audio [B, 1, block], next state (the input state is not modified)."""
        def arr(name):
            return np.ascontiguousarray(controls[name], np.float32)

        eps_x = arr("eps_x")
        batch = eps_x.shape[0]
        if eps_x.shape != (batch, self.block_size):
            raise ValueError(f"eps_x must be [batch, {self.block_size}], got {list(eps_x.shape)}")
        eps_z = arr("eps_z").reshape(batch, -1)
        z_offset = np.ascontiguousarray(np.broadcast_to(arr("z_offset"), (batch, self._m.z_dim)))
        temperature = np.broadcast_to(arr("temperature").reshape(-1), (batch,))
        grain = np.broadcast_to(arr("grain").reshape(-1) if "grain" in controls else np.float32(self.default_grain),
                                (batch,))
        h = np.array(state["h"], np.float32, copy=True)
        audio = np.zeros((batch, 1, self.block_size), np.float32)
        for b in range(batch):
            self._scratch_h[:] = h[b]
            self._call(self._scratch_h, float(temperature[b]), z_offset[b], float(grain[b]), eps_z[b], eps_x[b],
                       audio[b, 0])
            h[b] = self._scratch_h
        return audio, {"h": h}

    # --- one stream, state kept inside (the runtime's hot path) ---------------------------------------------
    def reset(self, state: dict[str, np.ndarray] | None = None) -> None:
        self._h[:] = (state if state is not None else self.initial_state(1))["h"][0]

    def get_state(self) -> dict[str, np.ndarray]:
        return {"h": self._h[None].copy()}

    def run(self, controls: dict[str, np.ndarray], out: np.ndarray) -> None:
        """One call of stream 0 from the runtime's [1, ...] control arrays (float32, C-contiguous) into out."""
        grain = float(controls["grain"][0]) if "grain" in controls else self.default_grain
        self._call(self._h, float(controls["temperature"][0]), controls["z_offset"][0], grain, controls["eps_z"][0],
                   controls["eps_x"][0], out)


def load_native_model(path: str | Path, batch: int = 1) -> NativeRuntimeModel:
    """A native VRNN weights file as a RuntimeModel-like object."""
    return NativeRuntimeModel(NativeVRNN(path), batch)
