"""The runtime model: an exported ONNX streaming graph, driven without torch or onnx (docs/DESIGN.md §3).

    model = load_model("model.onnx", device="auto", threads=1, batch=1)
    model.reset(seed=7)
    model.set_control("temperature", 0.9)
    audio = model.generate(48000)            # float32 [C, n]; the graph's block size is hidden

Loading is defensive: performers load files they downloaded, and a model that crashes the instrument on stage
or plays silence after a version change is worse than one that refuses to load. Before onnxruntime sees a file we
walk its protobuf structure ourselves (no onnx package), refuse external data outside the model's folder, check
the integrity seal written by `neuralinst export` (a SHA-256 over everything but the seal), and then check that the
graph's inputs and outputs are exactly the ones its metadata promises. Every refusal is one `UserError` sentence.

Per call, the graph runs through an IOBinding with two pre-bound sets of state buffers that swap roles each call
(state in A -> state out B, then B -> A), so no state array is allocated, copied to Python, or rebound between
calls; on CUDA the state never leaves the GPU.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from instrument.errors import UserError
from instrument.meta import (
    AUDIO_OUTPUT,
    FORMAT_VERSION,
    MAX_ARRAY_ELEMENTS,
    METADATA_KEY,
    NEXT_STATE_PREFIX,
    STATE_PREFIX,
    ModelMeta,
)

SEAL_KEY = METADATA_KEY + ".sha256"  # metadata_props entry holding the integrity seal
MAX_MODEL_BYTES = 2 * 1024**3  # protobuf's own limit; larger files are not single-file ONNX models
MAX_BATCH = 4096
MAX_RUNTIME_BYTES = 8 * 1024**3  # all inputs, states and outputs of one batch together
_NESTING_LIMIT = 32  # subgraphs inside subgraphs; deeper is hostile

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)",
              "int32": "tensor(int32)"}


# ==================================================================================================================
# A minimal protobuf reader: just enough of ONNX's ModelProto to find external data and compute the seal.
# ==================================================================================================================
class _Corrupt(Exception):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, start, end) of each field; for varints start is the value."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Corrupt("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, field_start
        elif wire == 1:
            pos += 8
            if pos > end:
                raise _Corrupt("truncated fixed64")
            yield field, wire, pos - 8, pos
        elif wire == 5:
            pos += 4
            if pos > end:
                raise _Corrupt("truncated fixed32")
            yield field, wire, pos - 4, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Corrupt("length-delimited field runs past its message")
            yield field, wire, pos, pos + length
            pos += length
        else:
            raise _Corrupt(f"unsupported wire type {wire}")
    if pos != end:
        raise _Corrupt("message overruns its end")


def _submessages(buf, start, end, wanted: int) -> Iterator[tuple[int, int]]:
    for field, wire, a, b in _fields(buf, start, end):
        if field == wanted and wire == 2:
            yield a, b


def _text(buf, a, b) -> str:
    try:
        return bytes(buf[a:b]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt("a string is not UTF-8") from None


def _entry(buf, a, b) -> tuple[str, str]:
    """A StringStringEntryProto (key = 1, value = 2)."""
    key = value = ""
    for field, wire, x, y in _fields(buf, a, b):
        if wire == 2 and field == 1:
            key = _text(buf, x, y)
        elif wire == 2 and field == 2:
            value = _text(buf, x, y)
    return key, value


# TensorProto: external_data = 13, data_location = 14.  SparseTensorProto: values = 1, indices = 2.
# GraphProto: node = 1, initializer = 5, sparse_initializer = 15.  NodeProto: attribute = 5.
# AttributeProto: t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor = 22, sparse_tensors = 23.
# FunctionProto: node = 7.  TrainingInfoProto: initialization = 1, algorithm = 2.
def _tensor_locations(buf, a, b, out: list[str]) -> None:
    external = False
    locations = []
    for field, wire, x, y in _fields(buf, a, b):
        if field == 14 and wire == 0:
            external = x == 1
        elif field == 13 and wire == 2:
            key, value = _entry(buf, x, y)
            if key == "location":
                locations.append(value)
    if external and not locations:
        raise _Corrupt("a tensor stored as external data names no file")
    out.extend(locations)


def _sparse_locations(buf, a, b, out):
    for field, wire, x, y in _fields(buf, a, b):
        if field in (1, 2) and wire == 2:
            _tensor_locations(buf, x, y, out)


def _node_locations(buf, a, b, out, depth):
    for attr_a, attr_b in _submessages(buf, a, b, 5):
        for field, wire, x, y in _fields(buf, attr_a, attr_b):
            if wire != 2:
                continue
            if field in (5, 10):
                _tensor_locations(buf, x, y, out)
            elif field in (22, 23):
                _sparse_locations(buf, x, y, out)
            elif field in (6, 11):
                _graph_locations(buf, x, y, out, depth + 1)


def _graph_locations(buf, a, b, out, depth=0):
    if depth > _NESTING_LIMIT:
        raise _Corrupt("subgraphs nested absurdly deep")
    for field, wire, x, y in _fields(buf, a, b):
        if wire != 2:
            continue
        if field == 1:
            _node_locations(buf, x, y, out, depth)
        elif field == 5:
            _tensor_locations(buf, x, y, out)
        elif field == 15:
            _sparse_locations(buf, x, y, out)


@dataclass
class OnnxFileSummary:
    """What the loader needs from a ModelProto before handing it to onnxruntime."""

    has_graph: bool
    metadata: dict[str, str]
    external_locations: list[str]
    seal_digest: str  # the SHA-256 the seal should hold


def scan_onnx_bytes(data: bytes) -> OnnxFileSummary:
    """Walk a serialized ModelProto; raise `_Corrupt` if it is not well-formed protobuf."""
    buf = memoryview(data)
    metadata: dict[str, str] = {}
    locations: list[str] = []
    has_graph = False
    sealed = hashlib.sha256()
    for field, wire, a, b in _fields(buf, 0, len(buf)):
        if field == 14 and wire == 2:  # metadata_props: sealed by content (below), so their order is free
            key, value = _entry(buf, a, b)
            if key in metadata:
                raise _Corrupt(f"metadata key {key!r} appears twice")
            metadata[key] = value
            continue
        # Every other field (graph, opsets, IR version, functions...) is sealed byte for byte, in file order.
        sealed.update(f"{field}:{wire}:".encode())
        sealed.update(str(a).encode() if wire == 0 else buf[a:b])
        if field == 7 and wire == 2:
            has_graph = True
            _graph_locations(buf, a, b, locations)
        elif field == 25 and wire == 2:  # functions
            for na, nb in _submessages(buf, a, b, 7):
                _node_locations(buf, na, nb, locations, 1)
        elif field == 20 and wire == 2:  # training_info
            for ga, gb in (*_submessages(buf, a, b, 1), *_submessages(buf, a, b, 2)):
                _graph_locations(buf, ga, gb, locations, 1)
    for key in sorted(metadata):
        if key != SEAL_KEY:
            k, v = key.encode(), metadata[key].encode()
            sealed.update(len(k).to_bytes(8, "little") + k + len(v).to_bytes(8, "little") + v)
    return OnnxFileSummary(has_graph, metadata, locations, sealed.hexdigest())


def seal_bytes(data: bytes) -> bytes:
    """Append the integrity seal to a serialized model (used by export/; appending a field is valid protobuf)."""
    summary = scan_onnx_bytes(data)
    if SEAL_KEY in summary.metadata:
        raise ValueError("the model is already sealed")
    key, value = SEAL_KEY.encode(), summary.seal_digest.encode()
    entry = b"\x0a" + _encode_varint(len(key)) + key + b"\x12" + _encode_varint(len(value)) + value
    return data + b"\x72" + _encode_varint(len(entry)) + entry  # field 14, wire type 2


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# ==================================================================================================================
# Loading and validation
# ==================================================================================================================
def _check_external_data(path: Path, locations: list[str]) -> None:
    folder = path.parent.resolve()
    for loc in locations:
        target = (folder / loc).resolve()
        if os.path.isabs(loc) or ".." in Path(loc).parts or target.parent != folder:
            raise UserError(
                f"{path.name}: it refers to external data {loc!r} outside its own folder; refusing to load it."
            )
        if not target.is_file():
            raise UserError(f"{path.name}: its external data file {loc!r} is missing.")


def read_model_file(path: str | os.PathLike) -> tuple[bytes, ModelMeta]:
    """Read and check a model file up to (not including) onnxruntime; return its bytes and metadata."""
    data, meta, _, _ = _read_and_check(Path(path))
    return data, meta


def _read_and_check(p: Path) -> tuple[bytes, ModelMeta, str, str]:
    """The file's bytes, its metadata (parsed and as text) and its seal, after every check."""
    name = p.name or str(p)
    if not p.exists():
        raise UserError(f"{p}: no such model file.")
    if not p.is_file():
        raise UserError(f"{p}: is not a file.")
    size = p.stat().st_size
    if size == 0:
        raise UserError(f"{name}: the file is empty.")
    if size > MAX_MODEL_BYTES:
        raise UserError(f"{name}: the file is larger than 2 GiB, which no single-file ONNX model can be.")
    data = p.read_bytes()
    try:
        summary = scan_onnx_bytes(data)
    except _Corrupt as e:
        raise UserError(f"{name}: is not an ONNX model, or is truncated or corrupt ({e}).") from None
    if not summary.has_graph:
        raise UserError(f"{name}: is not an ONNX model (it has no graph).")
    _check_external_data(p, summary.external_locations)
    if METADATA_KEY not in summary.metadata:
        raise UserError(f"{name}: has no neuralinst metadata; export it with `neuralinst export`.")
    text = summary.metadata[METADATA_KEY]
    if _declared_version(text) > FORMAT_VERSION:
        ModelMeta.from_json(text, source=name)  # raises the "newer than supported, upgrade" sentence
    # The seal before the metadata's details: a damaged file is called corrupt, not "unknown field 'kimd'".
    seal = summary.metadata.get(SEAL_KEY)
    if seal is None:
        raise UserError(f"{name}: has no integrity seal; re-export it with `neuralinst export`.")
    if seal != summary.seal_digest:
        raise UserError(f"{name}: is corrupt (its contents do not match the seal written at export).")
    meta = ModelMeta.from_json(text, source=name)
    _check_initial_state(meta, name)
    return data, meta, text, seal


def _declared_version(text: str) -> int:
    try:
        version = json.loads(text).get("format_version", 0)
    except (ValueError, AttributeError):
        return 0
    return version if isinstance(version, int) else 0


def _check_initial_state(meta: ModelMeta, name: str) -> None:
    init = meta.extra.get("initial_state", {})
    if not isinstance(init, dict):
        raise UserError(f"{name}: its metadata's initial_state is not a mapping.")
    shapes = {s.name: s.shape for s in meta.state}
    for key, values in init.items():
        if key not in shapes:
            raise UserError(f"{name}: its metadata gives an initial value for unknown state {key!r}.")
        if not isinstance(values, list) or len(values) != math.prod(shapes[key]):
            raise UserError(f"{name}: the initial value of state {key!r} does not match its shape.")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise UserError(f"{name}: the initial value of state {key!r} holds non-numbers.")
    noise = meta.extra.get("initial_state_noise_std", {})
    if not isinstance(noise, dict):
        raise UserError(f"{name}: its metadata's initial_state_noise_std is not a mapping.")
    for key, std in noise.items():
        if key not in shapes:
            raise UserError(f"{name}: its metadata gives an initial noise level for unknown state {key!r}.")
        if not (isinstance(std, (int, float)) and math.isfinite(std) and 0 <= std <= 100):
            raise UserError(f"{name}: the initial noise level of state {key!r} is not a number in [0, 100].")


def _check_graph_io(session, meta: ModelMeta, name: str) -> None:
    """The graph must have exactly the inputs and outputs its metadata describes (names, types, ranks, dims)."""
    expected_in = {c.name: (c.shape, c.dtype) for c in meta.controls}
    expected_in.update({STATE_PREFIX + s.name: (s.shape, s.dtype) for s in meta.state})
    audio_dtype = "float16" if meta.precision == "float16" else "float32"
    expected_out = {AUDIO_OUTPUT: ([meta.channels, meta.block_size], audio_dtype)}
    expected_out.update({NEXT_STATE_PREFIX + s.name: (s.shape, s.dtype) for s in meta.state})
    for what, args, expected in (("inputs", session.get_inputs(), expected_in),
                                 ("outputs", session.get_outputs(), expected_out)):
        actual = {a.name: a for a in args}
        if set(actual) != set(expected):
            missing = sorted(set(expected) - set(actual))
            unexpected = sorted(set(actual) - set(expected))
            raise UserError(
                f"{name}: the graph's {what} do not match its metadata (missing {missing or 'none'}, "
                f"unexpected {unexpected or 'none'})."
            )
        for arg_name, (shape, dtype) in expected.items():
            arg = actual[arg_name]
            if arg.type != _ORT_TYPES[dtype]:
                raise UserError(f"{name}: {arg_name!r} is {arg.type} in the graph but {dtype} in its metadata.")
            dims = list(arg.shape)
            if len(dims) != len(shape) + 1:
                raise UserError(
                    f"{name}: {arg_name!r} has rank {len(dims)} in the graph but {len(shape) + 1} in its metadata."
                )
            if isinstance(dims[0], int) and dims[0] != 1:
                raise UserError(f"{name}: {arg_name!r} has a fixed batch of {dims[0]}.")
            for got, want in zip(dims[1:], shape):
                if got != want:  # symbolic or wrong: either way the engine could not preallocate it
                    raise UserError(
                        f"{name}: {arg_name!r} has shape {dims[1:]} in the graph but {shape} in its metadata."
                    )


def _choose_providers(device: str, name: str) -> tuple[list[str], str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; choose auto, cpu or cuda.")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise UserError(f"{name}: CUDA was asked for but this onnxruntime offers only {', '.join(available)}.")
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"
    return ["CPUExecutionProvider"], "cpu"


def load_model(path: str | os.PathLike, device: str = "auto", threads: int = 1, batch: int = 1,
               backend: str = "auto") -> "RuntimeModel":
    """Load, check and prepare an exported model; refuse anything unsafe with one `UserError` sentence.

    backend: "onnx" runs the graph in onnxruntime; "native" runs a SampleRNN's C sample loop from the
    `.native.npz` beside the file (the ONNX file is still read and checked, and the weights must match it);
    "auto" is native when that works on the CPU, else onnx. The model's `backend` attribute says which runs,
    and `backend_note` why auto chose the graph (None when it did not have to)."""
    import onnxruntime as ort

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}.")
    if not (isinstance(batch, int) and 1 <= batch <= MAX_BATCH):
        raise UserError(f"batch {batch!r} is out of range (1..{MAX_BATCH}).")
    if not (isinstance(threads, int) and 1 <= threads <= 256):
        raise UserError(f"threads {threads!r} is out of range (1..256).")
    p = Path(path)
    _, meta, text, seal = _read_and_check(p)
    total = batch * (meta.channels * meta.block_size + sum(math.prod(s.shape) * 2 for s in meta.state)
                     + sum(math.prod(c.shape) for c in meta.controls))
    if total * 4 > MAX_RUNTIME_BYTES or meta.channels * meta.block_size > MAX_ARRAY_ELEMENTS:
        raise UserError(f"{p.name}: its arrays would need {total * 4 / 1e9:.1f} GB at batch {batch}; refusing.")
    note = None
    if backend != "onnx":
        try:
            return _load_native(p, meta, seal, device, batch, explicit=backend == "native")
        except UserError as e:
            if backend == "native":
                raise
            if meta.kind in NATIVE_KINDS:  # auto: the graph plays instead, and the reason is kept for the UI
                note = str(e)

    providers, kind = _choose_providers(device, p.name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # onnxruntime's warnings are not the performer's business
    try:
        session = ort.InferenceSession(str(p), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs; all mean "refuse"
        if device == "auto" and kind == "cuda":
            model = load_model(path, device="cpu", threads=threads, batch=batch, backend="onnx")
            model.backend_note = note
            return model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p.name}: onnxruntime cannot load it ({first[:300]}).") from None
    if kind == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        if device == "cuda":  # onnxruntime fell back silently (CUDA libraries missing): say so instead
            raise UserError(f"{p.name}: CUDA was asked for but onnxruntime could not start it on this machine.")
        kind = "cpu"
    # onnxruntime's own reading of the metadata must agree with ours (a file that shows two parsers two different
    # models is hostile).
    if session.get_modelmeta().custom_metadata_map.get(METADATA_KEY) != text:
        raise UserError(f"{p.name}: onnxruntime reads different metadata from it than the seal covers; refusing.")
    _check_graph_io(session, meta, p.name)
    model = RuntimeModel(session, meta, p, batch=batch, device=kind)
    model.backend_note = note
    return model


# ==================================================================================================================
# The native backend: a SampleRNN's C sample loop or a VRNN's C step (instrument/native), paired with its checked
# ONNX file
# ==================================================================================================================
BACKENDS = ("auto", "onnx", "native")
NATIVE_SUFFIX = ".native.npz"
NATIVE_UNAVAILABLE = "the native loop cannot run on this machine"  # no compiler, failed build or load
NATIVE_KINDS = ("samplernn", "vrnn")


def native_weights_path(onnx_path: str | os.PathLike) -> Path:
    """Where `neuralinst export` writes a model's native weights: M.onnx -> M.native.npz beside it."""
    p = Path(onnx_path)
    return p.with_name(p.stem + NATIVE_SUFFIX)


def _pairing_fields(meta: ModelMeta) -> dict[str, Any]:
    """What the native weights must share with the ONNX file for the two to be the same instrument: the stream's
    shape (kind, rate, block, state, controls, quantisation) and the model's identity (config, initial state,
    checkpoint step). Names, versions and training-data notes may differ."""
    return {
        "kind": meta.kind,
        "sample rate": meta.sample_rate,
        "channel count": meta.channels,
        "block size": meta.block_size,
        "state": [(s.name, list(s.shape), s.dtype) for s in meta.state],
        "controls": [(c.name, list(c.shape), c.role, c.minimum, c.maximum, c.default, c.distribution)
                     for c in meta.controls],
        "quantisation": meta.quantization,
        "training config": meta.config,
        "learned initial state": meta.extra.get("initial_state"),
        "initial state noise": meta.extra.get("initial_state_noise_std"),
        "checkpoint step": meta.extra.get("checkpoint_step"),
    }


def _load_native(p: Path, meta: ModelMeta, seal: str, device: str, batch: int, explicit: bool):
    """The native executor for `p`, or a one-sentence UserError saying why there is none."""
    import zipfile

    if meta.kind not in NATIVE_KINDS:
        raise UserError(f"{p.name}: the native backend plays SampleRNN and VRNN models only, not {meta.kind}.")
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; choose auto, cpu or cuda.")
    if device == "cuda":
        raise UserError(f"{p.name}: the native backend runs on the CPU; choose --device cpu (or auto) for it.")
    if device == "auto" and not explicit:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            raise UserError(f"{p.name}: a GPU is available, so the graph runs there.")
    npz = native_weights_path(p)
    if not npz.is_file():
        raise UserError(f"{p.name}: there are no native weights beside it ({npz.name}); re-export it with "
                        f"`neuralinst export` to get them.")
    if meta.kind == "vrnn":
        from instrument.native.vrnn import load_library, load_native_model
    else:
        from instrument.native.samplernn import load_library, load_native_model

    try:  # builds the C loop on first use where the source is newer than the library
        load_library()
    except (UserError, OSError) as e:
        reason = str(e).strip().splitlines()[0].rstrip(":. ") if str(e).strip() else type(e).__name__
        for own in ("the native SampleRNN loop ", "the native VRNN step "):
            reason = reason.removeprefix(own)
        raise UserError(f"{p.name}: {NATIVE_UNAVAILABLE} ({reason}).") from None
    unreadable = f"{npz.name}: is not a readable native weights file (a damaged, truncated or foreign archive)."
    try:
        model = load_native_model(npz, batch=batch)
    except UserError as e:
        if "weights file (" in str(e):  # numpy's own reason is no help to a performer
            raise UserError(unreadable) from None
        raise UserError(f"{npz.name}: {str(e).removeprefix(str(npz) + ': ')}") from None
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, RuntimeError):
        raise UserError(unreadable) from None  # a damaged zip surfaces as one of these (zlib, CRC, ctypes)
    own_seal = model.meta.extra.get("onnx_sha256")
    if own_seal is not None and own_seal != seal:
        raise UserError(f"{npz.name}: was written for another export of the model than {p.name}; re-export it.")
    ours, theirs = _pairing_fields(model.meta), _pairing_fields(meta)
    for what in ours:
        if ours[what] != theirs[what]:
            raise UserError(f"{npz.name}: does not match {p.name} (its {what} differs); re-export the model.")
    # The checked ONNX metadata is the model's description from here on (its name, versions and data notes).
    model.meta, model.path, model.backend, model.backend_note = meta, p, "native", None
    model.weights_path = npz
    return model


# ==================================================================================================================
# The runtime model
# ==================================================================================================================
class RuntimeModel:
    """One loaded streaming graph with its state, controls and seeded noise. Not thread-safe: one owner thread."""

    backend = "onnx"  # which executor runs (the native one has "native"); shown by the UI
    backend_note: str | None = None  # why load_model(backend="auto") did not pick the native loop

    def __init__(self, session, meta: ModelMeta, path: Path, batch: int, device: str):
        import onnxruntime as ort

        self.meta = meta
        self.path = path
        self.batch = batch
        self.device = device
        self._session = session
        float_dtype = np.float16 if meta.precision == "float16" else np.float32

        # Controls: numpy arrays whose memory the bindings read on every call (mutated in place, never rebound).
        self._controls: dict[str, np.ndarray] = {}
        for c in meta.controls:
            self._controls[c.name] = np.full((batch, *c.shape), c.default, dtype=_NUMPY_DTYPES[c.dtype])
        self._noise = [(self._controls[c.name], c.distribution) for c in meta.controls if c.role == "noise"]
        self._noise_scratch = {id(a): np.empty(a.shape, np.float32) for a, _ in self._noise if a.dtype != np.float32}
        # Randomised initial state (Dadabots' SampleRNN h0): N(0, std^2) added at every reset, from the seeded rng.
        self._initial_noise = [(s.name, float(meta.extra.get("initial_state_noise_std", {})[s.name]))
                               for s in meta.state if meta.extra.get("initial_state_noise_std", {}).get(s.name)]

        # Initial state, one array per state name, repeated over the batch.
        init = meta.extra.get("initial_state", {})
        self._initial: dict[str, np.ndarray] = {}
        for s in meta.state:
            dtype = _NUMPY_DTYPES[s.dtype]
            if s.name in init:
                one = np.asarray(init[s.name], dtype=dtype).reshape(s.shape)
                self._initial[s.name] = np.ascontiguousarray(np.broadcast_to(one, (batch, *s.shape)))
            else:
                self._initial[s.name] = np.zeros((batch, *s.shape), dtype=dtype)

        # Two state buffer sets on the device and the two bindings that alternate between them.
        dev = "cuda" if device == "cuda" else "cpu"
        self._host_state = [{k: v.copy() for k, v in self._initial.items()} for _ in range(2)]  # keeps CPU memory
        self._state_values = [
            {k: ort.OrtValue.ortvalue_from_numpy(v, dev, 0) for k, v in host.items()} for host in self._host_state
        ]
        self._audio = np.zeros((batch, meta.channels, meta.block_size), dtype=float_dtype)
        self._audio_value = ort.OrtValue.ortvalue_from_numpy(self._audio)  # shares the numpy memory (CPU)
        self._control_values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in self._controls.items()}
        self._bindings = [self._make_binding(src, 1 - src) for src in (0, 1)]
        self._current = 0  # which state set holds the state the next call reads
        self._pos = meta.block_size  # read position in self._audio; block_size = nothing left over
        self._rng = np.random.default_rng(0)
        self.recoveries = 0  # blocks that came out non-finite and were replaced by silence (the state restarted)
        self.reset(0)

    def _make_binding(self, src: int, dst: int):
        binding = self._session.io_binding()
        for name, value in self._control_values.items():
            binding.bind_ortvalue_input(name, value)
        for s in self.meta.state:
            binding.bind_ortvalue_input(STATE_PREFIX + s.name, self._state_values[src][s.name])
            binding.bind_ortvalue_output(NEXT_STATE_PREFIX + s.name, self._state_values[dst][s.name])
        binding.bind_ortvalue_output(AUDIO_OUTPUT, self._audio_value)
        return binding

    # --- public API ---------------------------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    @property
    def sample_rate(self) -> int:
        return self.meta.sample_rate

    @property
    def channels(self) -> int:
        return self.meta.channels

    @property
    def block_size(self) -> int:
        return self.meta.block_size

    def reset(self, seed: int | None = 0) -> None:
        """Back to the initial state, leftovers dropped, noise generator reseeded (controls keep their values).

        The same seed and the same control values give the same audio, call for call. Where the metadata asks
        for a randomised initial state (`extra["initial_state_noise_std"]`), the noise is drawn first, from the
        same seeded generator, in state order."""
        self._rng = np.random.default_rng(seed)
        if self._initial_noise:
            state = dict(self._initial)
            for name, std in self._initial_noise:
                state[name] = state[name] + std * self._rng.standard_normal(state[name].shape)
            self.set_state(state)
        else:
            self.set_state(self._initial)
        self._pos = self.meta.block_size

    def set_control(self, name: str, value: Any) -> None:
        """Set a control for the following calls: a scalar or an array of the control's shape (broadcast over
        the batch) or of shape [batch, *shape]. Values are clamped to the control's range."""
        try:
            spec = self.meta.control(name)
        except KeyError:
            names = ", ".join(c.name for c in self.meta.controls) or "none"
            raise UserError(f"the model has no control {name!r} (it has: {names}).") from None
        if spec.role == "noise":
            raise UserError(f"control {name!r} is noise drawn by the runtime; use reset(seed) to choose it.")
        target = self._controls[name]
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise UserError(f"control {name!r} must be finite, got {value!r}.")
        try:
            target[...] = np.clip(np.broadcast_to(arr, target.shape), spec.minimum, spec.maximum)
        except ValueError:
            raise UserError(
                f"control {name!r} takes shape {spec.shape} (or [{self.batch}, ...]), got {list(arr.shape)}."
            ) from None

    def get_control(self, name: str) -> np.ndarray:
        return self._controls[name].copy()

    def last_controls(self) -> dict[str, np.ndarray]:
        """Copies of the arrays the last call used, noise included (verification feeds them to torch)."""
        return {k: v.copy() for k, v in self._controls.items()}

    def get_state(self) -> dict[str, np.ndarray]:
        """The state the next call will read (copies, on the CPU)."""
        return {s.name: self._state_values[self._current][s.name].numpy().copy() for s in self.meta.state}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the state the next call reads (e.g. restore a snapshot); arrays are [batch, *shape]."""
        for s in self.meta.state:
            value = np.ascontiguousarray(state[s.name], dtype=_NUMPY_DTYPES[s.dtype])
            if value.shape != (self.batch, *s.shape):
                raise UserError(f"state {s.name!r} takes shape {[self.batch, *s.shape]}, got {list(value.shape)}.")
            self._state_values[self._current][s.name].update_inplace(value)

    def snapshot(self) -> dict[str, Any]:
        """The whole playing position: state, the samples `generate` has left over, the noise generator.
        `restore` continues from it exactly, as often as asked (the engine's reset cue: instrument/cue.py).
        Controls are not part of it: they keep whatever values are set."""
        return {"state": self.get_state(), "audio": self._audio.copy(), "pos": self._pos,
                "rng": self._rng.bit_generator.state}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.set_state(snapshot["state"])
        self._audio[...] = snapshot["audio"]
        self._pos = snapshot["pos"]
        self._rng.bit_generator.state = snapshot["rng"]

    def step(self) -> np.ndarray:
        """One graph call with the current controls and fresh noise: a copy of audio float32 [B, C, block].

        Any samples `generate` had left over are dropped."""
        self._run()
        self._pos = self.meta.block_size
        return self._audio.astype(np.float32, copy=True)

    def generate(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """The next n samples of batch item 0 as float32 [C, n], continuing exactly where the last call ended."""
        return self.generate_batch(n, None if out is None else out[None])[0]

    def generate_batch(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """The next n samples of every stream: float32 [B, C, n] (written into `out` when given)."""
        if out is None:
            out = np.empty((self.batch, self.meta.channels, n), dtype=np.float32)
        block = self.meta.block_size
        done = 0
        while done < n:
            if self._pos >= block:
                self._run()
                self._pos = 0
            take = min(block - self._pos, n - done)
            out[:, :, done:done + take] = self._audio[:, :, self._pos:self._pos + take]
            self._pos += take
            done += take
        return out

    # --- one call -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        rng = self._rng
        for arr, distribution in self._noise:
            target = self._noise_scratch.get(id(arr), arr)
            if distribution == "normal":
                rng.standard_normal(dtype=np.float32, out=target)
            else:
                rng.random(dtype=np.float32, out=target)
            if target is not arr:
                arr[...] = target
        self._session.run_with_iobinding(self._bindings[self._current])
        self._current = 1 - self._current
        if not np.isfinite(self._audio).all():
            # A model that blew up would otherwise carry NaN in its state forever: a silent instrument on stage.
            # Silence this block and restart the stream from the initial state (the noise stream goes on).
            self._audio[...] = 0.0
            self.set_state(self._initial)
            self.recoveries += 1
