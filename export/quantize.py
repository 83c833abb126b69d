"""Weight-only quantisation of an exported streaming graph (int8 or int4), and a measure of what it costs.

    from export.quantize import quantize_file
    report = quantize_file("vrnn.onnx", "vrnn-int8.onnx", scheme="int8")   # -> QuantReport

Why: a batch-1 streaming call is a chain of matrix-vector products, so its speed is the speed at which the weights
stream from memory. VRNN `-paper` reads ~27 M fp32 weights (108 MB) per 200-sample call: that is memory-bound and
far larger than this machine's 32 MB L3. In int8 (27 MB) or int4 (14 MB) the same products fit in cache.
Measured with `neuralinst bench rtf --configs vrnn-paper --weights fp32,int8,int4` (benchmarks/rtf.py).

Schemes (onnxruntime's own quantisers, so the runtime needs nothing new):
- `int8`: dynamic quantisation, per output channel, signed int8 weights (MatMulInteger / DynamicQuantizeMatMul;
  activations are quantised on the fly per call).
- `int4`: MatMulNBits, symmetric 4-bit blocks of 32 along the input, `accuracy_level=4` (products in int8 with
  the activations quantised per block: without it the CPU kernel dequantises to fp32 and is no faster than fp32).

Only matrix products with a constant weight of at least `min_weights` elements are quantised (Gemm is rewritten as
MatMul + Add first, which quantisers understand); recurrent ops (GRU/LSTM), convolutions and small products stay
fp32. The graph keeps its float32 inputs and outputs and the streaming contract; the metadata records the scheme
under `extra["weights"]`. Sampling models (SampleRNN's inverse-CDF levels) are refused, as for fp16: a
rounding change moves which level is drawn, so the file would no longer play the trained model.

The cost is measured, not assumed (`quantisation_error`): both graphs run teacher-forced from the same state with
the same controls and noise, call after call (the fp32 graph's state is fed to both), and the report gives the
relative RMS error of the audio and of the next state per call.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from instrument.meta import METADATA_KEY, ModelMeta
from instrument.model import SEAL_KEY, load_model, seal_bytes

SCHEMES = ("fp32", "int8", "int4")
DEFAULT_MIN_WEIGHTS = 16384  # smaller products are not worth a quantise/dequantise pair
MAX_RELATIVE_ERROR = 0.05  # per-call RMS(audio error) / RMS(audio) above this, the quantised file is refused
DEFAULT_KEEP_ERROR = 0.01  # a product that alone moves audio or state by more than this stays fp32
SENSITIVITY_CALLS = 40


logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # one INFO line per node otherwise


class QuantiseError(ValueError):
    pass


@dataclass
class QuantReport:
    scheme: str
    matmuls: int  # products quantised
    weights: int  # weight elements quantised
    bytes_before: int
    bytes_after: int
    calls: int = 0
    audio_rel_rms: float = float("nan")  # median over calls of RMS(q - fp32) / RMS(fp32), teacher-forced
    audio_rel_rms_max: float = float("nan")
    state_rel_rms: float = float("nan")
    kept: list = field(default_factory=list)  # products left fp32 by the sensitivity rule
    kept_like: str | None = None  # the model whose sensitivity chose `kept`, when not this one's

    def summary(self) -> str:
        kept = (f" ({len(self.kept)} kept fp32: {', '.join(k['product'].strip('/').split('/')[0] for k in self.kept)})"
                if self.kept else "")
        return (f"{self.scheme} weights: {self.matmuls} products{kept}, {self.weights / 1e6:.2f} M weights, "
                f"{self.bytes_before / 1e6:.1f} -> {self.bytes_after / 1e6:.1f} MB; teacher-forced over "
                f"{self.calls} calls: audio error {100 * self.audio_rel_rms:.2f} % RMS (max "
                f"{100 * self.audio_rel_rms_max:.2f} %), state error {100 * self.state_rel_rms:.2f} % RMS")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _gemm_to_matmul(graph: onnx.GraphProto, min_weights: int) -> None:
    """Gemm(A, W, b) with a constant W (transA=0, alpha=beta=1) -> MatMul(A, W or W^T) + Add(b), in place."""
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for n in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = inits.get(n.input[1]) if n.op_type == "Gemm" and len(n.input) > 1 else None
        if (w is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0
                or int(np.prod(w.dims)) < min_weights):
            nodes.append(n)
            continue
        array = numpy_helper.to_array(w)
        if attrs.get("transB", 0):
            array = array.T
        weight = numpy_helper.from_array(np.ascontiguousarray(array), f"{w.name}.matmul")
        graph.initializer.append(weight)
        has_bias = len(n.input) > 2 and bool(n.input[2])
        product = f"{n.output[0]}.matmul" if has_bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], weight.name], [product], name=f"{n.name}.matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, n.input[2]], [n.output[0]], name=f"{n.name}.bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _sizes(graph: onnx.GraphProto, min_weights: int) -> list[tuple[str, int]]:
    """(MatMul node name, constant weight elements) of every product big enough to quantise, in graph order."""
    inits = {i.name: i for i in graph.initializer}
    out = []
    for n in graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            size = int(np.prod(inits[n.input[1]].dims))
            if size >= min_weights:
                out.append((n.name, size))
    return out


def _quantisable(graph: onnx.GraphProto, min_weights: int) -> tuple[list[str], int]:
    sizes = _sizes(graph, min_weights)
    return [n for n, _ in sizes], sum(s for _, s in sizes)


def products(proto: onnx.ModelProto, min_weights: int = DEFAULT_MIN_WEIGHTS) -> list[tuple[str, int]]:
    """The products `quantise_proto` can quantise: (name, weight elements)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    _gemm_to_matmul(proto.graph, min_weights)
    return _sizes(proto.graph, min_weights)


def quantise_proto(proto: onnx.ModelProto, scheme: str, min_weights: int = DEFAULT_MIN_WEIGHTS,
                   only: list[str] | None = None) -> tuple[onnx.ModelProto, int, int]:
    """The quantised graph (metadata untouched), the number of products and of weights quantised. `only`: the
    products (MatMul node names after the Gemm rewrite, see `products`) to quantise; default all of them."""
    if scheme not in ("int8", "int4"):
        raise QuantiseError(f"unknown weight scheme {scheme!r} (expected int8 or int4)")
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # never edit the caller's graph
    _gemm_to_matmul(proto.graph, min_weights)
    nodes, total = _quantisable(proto.graph, min_weights)
    if only is not None:
        sizes = dict(_sizes(proto.graph, min_weights))
        nodes = [n for n in nodes if n in set(only)]
        total = sum(sizes[n] for n in nodes)
    if not nodes:
        raise QuantiseError(f"the graph has no matrix product with ≥ {min_weights} constant weights to quantise")
    if scheme == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        chosen = set(nodes)
        others = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.name not in chosen]
        quantiser = MatMulNBitsQuantizer(proto, block_size=32, is_symmetric=True, accuracy_level=4,
                                         nodes_to_include=nodes, nodes_to_exclude=others)
        quantiser.process()
        return quantiser.model.model, len(nodes), total
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic works on files; its temporary files stay in a private folder.
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(proto, src)
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # its advice to pre-process is for CNNs on images
        try:
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=nodes,
                                 op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
        finally:
            root.level = level
        return onnx.load(dst), len(nodes), total


def _sealed(quantised: onnx.ModelProto, meta: ModelMeta, props: dict[str, str], producer: str) -> bytes:
    del quantised.metadata_props[:]
    entry = quantised.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    for key, value in props.items():
        if key not in (METADATA_KEY, SEAL_KEY):
            e = quantised.metadata_props.add()
            e.key, e.value = key, value
    quantised.producer_name = producer
    return seal_bytes(quantised.SerializeToString())


def sensitivity(proto: onnx.ModelProto, src: Path, scheme: str, calls: int = SENSITIVITY_CALLS,
                min_weights: int = DEFAULT_MIN_WEIGHTS) -> list[tuple[str, int, float]]:
    """(product, weights, error) with each product quantised alone: the teacher-forced per-call error (the larger
    of the audio's and the state's relative RMS) against the fp32 graph at `src`."""
    props = {e.key: e.value for e in proto.metadata_props}
    meta = ModelMeta.from_json(props[METADATA_KEY], str(src))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one.onnx"
        for name, size in products(proto, min_weights):
            one, _, _ = quantise_proto(proto, scheme, min_weights, only=[name])
            path.write_bytes(_sealed(one, meta, props, proto.producer_name))
            report = QuantReport(scheme, 1, size, 0, 0)
            _measure(report, src, path, calls)
            out.append((name, size, max(report.audio_rel_rms, report.state_rel_rms)))
    return out


def kept_products(model: str | os.PathLike, scheme: str, keep_error: float = DEFAULT_KEEP_ERROR,
                  min_weights: int = DEFAULT_MIN_WEIGHTS) -> list[str]:
    """The products of (trained, fp32) `model` that the sensitivity rule leaves fp32 in `scheme`."""
    proto = onnx.load(model)
    return [name for name, _, err in sensitivity(proto, Path(model), scheme, min_weights=min_weights)
            if err > keep_error]


def quantize_file(src: str | os.PathLike, dst: str | os.PathLike, scheme: str, calls: int = 100,
                  min_weights: int = DEFAULT_MIN_WEIGHTS, max_error: float = MAX_RELATIVE_ERROR,
                  keep_error: float | None = DEFAULT_KEEP_ERROR, keep: list[str] | None = None) -> QuantReport:
    """Quantise the sealed streaming model `src` into `dst` (sealed, metadata kept) and measure the error.

    Mixed precision, chosen by measurement: a product whose error quantised alone exceeds `keep_error` stays fp32
    (in a trained VRNN these are the decoder's last layers: alone in int4, `dec.mean` moved the audio by 111 %,
    the recurrent weights by < 3 %). `keep_error=None` quantises every product. `keep`: the products to leave
    fp32 instead of measuring (e.g. those a trained model of the same config family needed, see `kept_products`)."""
    src, dst = Path(src), Path(dst)
    proto = onnx.load(src)
    props = {e.key: e.value for e in proto.metadata_props}
    meta = ModelMeta.from_json(props[METADATA_KEY], str(src))
    if meta.quantization:
        raise QuantiseError("quantised weights change which levels a sampling (SampleRNN) model draws; "
                            "export it with fp32 weights")
    if meta.extra.get("weights"):
        raise QuantiseError(f"{src.name} already has {meta.extra['weights'].get('scheme')} weights")
    if meta.precision != "float32":
        raise QuantiseError("weight quantisation starts from a float32 graph (not --fp16)")
    only, kept = None, []
    if keep is not None:
        sizes = products(proto, min_weights)
        only = [name for name, _ in sizes if name not in set(keep)]
        kept = [{"product": name, "weights": size, "solo_error": None} for name, size in sizes if name in set(keep)]
    elif keep_error is not None:
        solo = sensitivity(proto, src, scheme, min_weights=min_weights)
        only = [name for name, _, err in solo if err <= keep_error]
        kept = [{"product": name, "weights": size, "solo_error": round(err, 5)}
                for name, size, err in solo if err > keep_error]
        if not only:
            raise QuantiseError(f"every product moves the output by more than {100 * keep_error:g} % when "
                                f"quantised to {scheme}; the model stays fp32")
    quantised, matmuls, weights = quantise_proto(proto, scheme, min_weights, only=only)
    meta.extra["weights"] = {"scheme": scheme, "products": matmuls, "weights": weights,
                             "min_weights": min_weights, "kept_fp32": kept, "keep_error": keep_error}
    data = _sealed(quantised, meta, props, proto.producer_name)
    tmp = dst.with_name(dst.name + ".partial")
    tmp.write_bytes(data)
    report = QuantReport(scheme, matmuls, weights, src.stat().st_size, len(data), kept=kept)
    try:
        if calls > 0:
            _measure(report, src, tmp, calls)
        if report.calls and not report.audio_rel_rms <= max_error:
            raise QuantiseError(f"{scheme} weights change the audio by {100 * report.audio_rel_rms:.1f} % RMS "
                                f"per call (limit {100 * max_error:.0f} %)")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def quantisation_error(reference: str | os.PathLike, quantised: str | os.PathLike, calls: int = 100,
                       seed: int = 0) -> dict:
    """Teacher-forced per-call error of `quantised` against `reference` (both streaming graphs of one model)."""
    report = QuantReport("?", 0, 0, 0, 0)
    _measure(report, Path(reference), Path(quantised), calls, seed)
    return {"calls": report.calls, "audio_rel_rms": report.audio_rel_rms,
            "audio_rel_rms_max": report.audio_rel_rms_max, "state_rel_rms": report.state_rel_rms}


def _rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b ** 2)), 1e-12))


def _measure(report: QuantReport, reference: Path, quantised: Path, calls: int, seed: int = 0) -> None:
    ref = load_model(reference, device="cpu", threads=1, batch=1, backend="onnx")
    q = load_model(quantised, device="cpu", threads=1, batch=1, backend="onnx")
    ref.reset(seed)
    q.reset(seed)  # same seed: both draw the same noise, call after call
    # Latent controls move across their range call by call (at their default, a zero latent, a product with
    # zeros is exact in any precision and would hide the error).
    rng = np.random.default_rng(seed)
    moving = [c for c in ref.meta.controls if c.role in ("latent", "latent_offset")]
    audio_err, state_err = [], []
    for _ in range(calls):
        for c in moving:
            value = rng.uniform(max(c.minimum, -1.0), min(c.maximum, 1.0), c.shape)
            ref.set_control(c.name, value)
            q.set_control(c.name, value)
        q.set_state(ref.get_state())
        a_ref = ref.step()
        a_q = q.step()
        audio_err.append(_rel_rms(a_q, a_ref))
        s_ref, s_q = ref.get_state(), q.get_state()
        state_err.append(float(np.median([_rel_rms(s_q[k], s_ref[k]) for k in s_ref])) if s_ref else 0.0)
    report.calls = calls
    report.audio_rel_rms = float(np.median(audio_err))
    report.audio_rel_rms_max = float(np.max(audio_err))
    report.state_rel_rms = float(np.median(state_err))
