"""Write a SampleRNN's weights for the native sample loop (instrument/native): an .npz of float32/int32 arrays.

    python -m export.native_weights CHECKPOINT --out model.srnn.npz [--half | --int8]

No pickle (the runtime loads it with `np.load(..., allow_pickle=False)`). Everything is stored in the layout the
C loop reads, already resolved: weight normalisation applied, the sample-level input conv folded with the embedding
into lookup tables [frame_size, q, dim], the transposed-conv upsampling as [frame_size, dim_out, dim_in] matrices,
and the level -> audio and level -> frame-tier-input maps as [q] tables computed by the torch model itself (so the
native audio is bit-identical to torch's for the same levels). `meta_json` holds the model's ModelMeta (the same
description the ONNX file carries), as UTF-8 bytes.

`half=True` stores the streamed matrices (GRU/LSTM, skip, upsampling, MLP) as float16: half the bytes per sample
for the C loop. The model must be rounded first (`Model.round_weights_to_half_()`, which `--half` does to the
loaded checkpoint), and its ONNX export must come from the same rounded model for the two to agree.

`int8=True` stores them as int8 with one float32 scale per row (`NAME` and `NAME.scale`): a quarter of the bytes,
and integer dot products in the loop (2.4x faster than float32 on a Zen 1 core, `neuralinst bench native`). The
model must be on the int8 grid first (`Model.round_weights_to_int8_()`, which `--int8` does).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from instrument.errors import UserError

FORMAT_VERSION = 1
MAX_TIERS, MAX_LAYERS, MAX_HIDDEN = 8, 8, 8  # instrument/native/samplernn.c


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


@torch.no_grad()
def native_arrays(model, meta_json: str, half: bool = False, int8: bool = False) -> dict[str, np.ndarray]:
    """The arrays the C loop needs, by name (see instrument/native/samplernn.py for the reader)."""
    from instrument.native.samplernn import STORAGE_FLOAT16, STORAGE_FLOAT32, STORAGE_INT8, quantize_rows
    from training.samplernn import _frame_input

    if half and int8:
        raise UserError("native weights are float16 or int8, not both.")
    storage = STORAGE_INT8 if int8 else STORAGE_FLOAT16 if half else STORAGE_FLOAT32
    c = model.config
    if len(model.tiers) > MAX_TIERS or c.n_rnn > MAX_LAYERS or c.mlp_hidden_layers > MAX_HIDDEN:
        raise UserError(f"{c.name}: the native loop handles at most {MAX_TIERS} tiers, {MAX_LAYERS} RNN layers "
                        f"and {MAX_HIDDEN} hidden MLP layers.")
    model = model.eval()
    levels = torch.arange(c.q_levels)
    out: dict[str, np.ndarray] = {
        "format_version": np.array([FORMAT_VERSION], np.int32),
        "meta_json": np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8).copy(),
        "header": np.array([len(model.tiers), c.n_rnn, c.dim, c.q_levels, c.mlp_hidden_layers,
                            int(c.rnn == "lstm"), int(c.skip_connections), storage], np.int32),
        "frame_sizes": np.array([t.frame_size for t in model.tiers], np.int32),
        "n_frame_samples": np.array([t.n_frame_samples for t in model.tiers], np.int32),
        "dequant": _f32(model.dequantize(levels)),
        "frame_in": _f32(_frame_input(levels, c.q_levels)),
    }
    def matrix(name: str, w: torch.Tensor, layout=lambda t: t) -> None:
        a = _f32(layout(w))
        if int8:
            q, scale = quantize_rows(a)
            if not np.allclose(q * scale[..., None], a, rtol=1e-6, atol=0):
                raise UserError("int8 native weights need a model rounded with round_weights_to_int8_() first.")
            out[name], out[name + ".scale"] = q, scale
        elif half:
            h = a.astype(np.float16)
            if not np.array_equal(h.astype(np.float32), a):
                raise UserError("float16 native weights need a model rounded with round_weights_to_half_() first.")
            out[name] = h
        else:
            out[name] = a

    for i, tier in enumerate(model.tiers):
        p = f"tier{i}."
        out[p + "expand_w"] = _f32(tier.expand.weight)  # [dim, nfs]
        out[p + "expand_b"] = _f32(tier.expand.bias)
        for l, rnn in enumerate(tier.rnns):
            matrix(p + f"w_ih{l}", rnn.weight_ih_l0)
            out[p + f"b_ih{l}"] = _f32(rnn.bias_ih_l0)
            matrix(p + f"w_hh{l}", rnn.weight_hh_l0)
            out[p + f"b_hh{l}"] = _f32(rnn.bias_hh_l0)
        if tier.skips:
            for l, skip in enumerate(tier.skips):
                matrix(p + f"skip_w{l}", skip.weight)
            out[p + "skip_b"] = _f32(tier.skips[0].bias)
        matrix(p + "up_w", tier.upsample.weight, lambda t: t.permute(2, 1, 0))  # [in,out,k] -> [k,out,in]
        out[p + "up_b"] = _f32(tier.upsample_bias.t())  # [dim, k] -> [k, dim]
    out["mlp.tables"] = _f32(model.mlp.input_tables())
    for l, lin in enumerate(model.mlp.hidden):
        matrix(f"mlp.hid_w{l}", lin.weight)
        out[f"mlp.hid_b{l}"] = _f32(lin.bias)
    matrix("mlp.out_w", model.mlp.output.weight)
    out["mlp.out_b"] = _f32(model.mlp.output.bias)
    return out


def write_native_weights(model, path: str | Path, info: dict | None = None, half: bool = False,
                         int8: bool = False) -> Path:
    """Write `model`'s native weights file (float16 matrices with half=True, int8 with int8=True, see above);
    returns its path."""
    from export.onnx_export import prepare_meta

    if getattr(model, "kind", "") != "samplernn":
        raise UserError(f"native weights exist for SampleRNN only, not {getattr(model, 'kind', '?')!r}.")
    meta = prepare_meta(model, info)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to other names
        np.savez(f, **native_arrays(model, meta.to_json(), half, int8))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a SampleRNN checkpoint's weights for the native loop.")
    parser.add_argument("checkpoint", help="a training run folder or one of its checkpoint folders")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--half", action="store_true",
                        help="float16 matrices (rounds the model; export its ONNX from the rounded model too)")
    parser.add_argument("--int8", action="store_true",
                        help="int8 matrices with per-row scales (rounds the model to that grid; export its ONNX from "
                        "the rounded model too)")
    args = parser.parse_args(argv)
    try:
        from training.checkpoint import load_model

        model, info = load_model(Path(args.checkpoint))
        if args.half and args.int8:
            raise UserError("choose --half or --int8, not both.")
        if args.half:
            model.round_weights_to_half_()
        if args.int8:
            model.round_weights_to_int8_()
        print(write_native_weights(model, args.out, info, half=args.half, int8=args.int8))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ==================================================================================================================
# VRNN (instrument/native/vrnn.c): every matrix product of one generation step, float32 or int8 with row scales
# ==================================================================================================================
VRNN_KIND = "vrnn"  # instrument/native/vrnn.py KIND
VRNN_SENSITIVITY_CALLS = 40


def vrnn_products(model) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """name -> (weight [rows, cols], bias or None) of every product of a VRNN generation step, in the native
    file's naming (instrument/native/vrnn.py layer_shapes). The weights are views into the model's parameters:
    the layers with two inputs are split by column ([phi_z(z), h] for the decoder, [phi_x(x), phi_z(z)] for the
    GRU), each part with its own rows to scale."""
    c = model.config
    lin = {}
    for l in range(c.mlp_layers):
        lin[f"prior{l}"] = model.phi_prior[2 * l]
        lin[f"phi_x{l}"] = model.phi_x[2 * l]
        if l:
            lin[f"dec{l}"] = model.phi_dec[2 * l]
    lin.update({"prior_mean": model.prior.mean, "prior_std": model.prior.std, "phi_z": model.phi_z[0],
                "dec_mean": model.dec.mean, "dec_std": model.dec.std})
    out = {name: (m.weight.data, m.bias.data) for name, m in lin.items()}
    dec0, zf, xf = model.phi_dec[0], c.z_feat_dim, c.x_feat_dim
    out["dec_z"] = (dec0.weight.data[:, :zf], dec0.bias.data)
    out["dec_h"] = (dec0.weight.data[:, zf:], None)
    rnn = model.rnn
    out["gru_x"] = (rnn.weight_ih.data[:, :xf], rnn.bias_ih.data)
    out["gru_z"] = (rnn.weight_ih.data[:, xf:], None)
    out["gru_h"] = (rnn.weight_hh.data, rnn.bias_hh.data)
    return out


def _round_rows_(w: torch.Tensor) -> None:
    """In place: w = q * scale per row, q integer in [-127, 127], exactly as quantize_rows computes it."""
    from instrument.native.samplernn import quantize_rows

    q, scale = quantize_rows(_f32(w))
    w.copy_(torch.from_numpy(q.astype(np.float32) * scale[:, None]))


@torch.no_grad()
def vrnn_sensitivity(model, calls: int = VRNN_SENSITIVITY_CALLS, seed: int = 0,
                     min_weights: int = 16384) -> dict[str, float]:
    """name -> the per-call error with that product alone rounded to int8 rows: teacher-forced (every call starts
    from the float32 model's own state, with the same controls and noise), the larger of the audio's and the next
    state's relative RMS, averaged over `calls` calls; the latent offset moves across its range (a zero latent
    would hide the error). Products with fewer than `min_weights` weights are not measured (they stay float32)."""
    model = model.eval()
    c = model.config
    g = torch.Generator().manual_seed(seed)
    k = c.frames_per_step
    controls = {
        "temperature": torch.ones(calls),
        "z_offset": torch.rand(calls, c.z_dim, generator=g) * 2 - 1,
        "eps_z": torch.randn(calls, *((k, c.z_dim) if k > 1 else (c.z_dim,)), generator=g),
        "eps_x": torch.randn(calls, c.frame * k, generator=g),
    }
    states, h = [], model.initial_state(1)["h"]
    for i in range(calls):  # the float32 model's closed-loop trajectory
        states.append(h)
        _, nxt = model.step({n: v[i:i + 1] for n, v in controls.items()}, {"h": h})
        h = nxt["h"]
    before = {"h": torch.cat(states)}
    ref_audio, ref_next = model.step(controls, before)  # all calls at once: a batch of `calls` streams

    def rel(a, b):
        return ((a - b).square().mean(dim=tuple(range(1, a.dim()))).sqrt()
                / b.square().mean(dim=tuple(range(1, b.dim()))).sqrt().clamp_min(1e-12))

    out = {}
    for name, (w, _) in vrnn_products(model).items():
        if w.numel() < min_weights:
            continue
        saved = w.clone()
        _round_rows_(w)
        audio, nxt = model.step(controls, before)
        w.copy_(saved)
        out[name] = float(torch.maximum(rel(audio, ref_audio), rel(nxt["h"], ref_next["h"])).mean())
    return out


def round_vrnn_to_int8_(model, keep_error: float = 0.01, min_weights: int = 16384) -> dict[str, float | None]:
    """Round the products whose int8 rounding alone costs at most `keep_error` (vrnn_sensitivity) onto the int8 row
    grid, in place, so that the ONNX graph exported next and the native int8 step play the same model. Returns
    name -> measured error (None: too small to measure, stays float32); those above keep_error stay float32."""
    solo = vrnn_sensitivity(model, min_weights=min_weights)
    for name, (w, _) in vrnn_products(model).items():
        if name in solo and solo[name] <= keep_error:
            _round_rows_(w)
    return {name: solo.get(name) for name in vrnn_products(model)}


@torch.no_grad()
def vrnn_native_arrays(model, meta_json: str) -> dict[str, np.ndarray]:
    """The arrays the C step needs (instrument/native/vrnn.py reads them). A product already on the int8 row grid
    (round_vrnn_to_int8_) is stored as int8 + scales, every other one as float32: what was rounded is what the
    graph plays, and nothing else is changed."""
    from instrument.native.samplernn import quantize_rows

    c = model.config
    if c.mlp_layers > MAX_LAYERS:
        raise UserError(f"{c.name}: the native VRNN step handles at most {MAX_LAYERS} layers per MLP.")
    out: dict[str, np.ndarray] = {
        "format_version": np.array([FORMAT_VERSION], np.int32),
        "kind": np.frombuffer(VRNN_KIND.encode(), dtype=np.uint8).copy(),
        "meta_json": np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8).copy(),
        "header": np.array([c.frame, c.h_dim, c.z_dim, c.mlp_layers, int(c.play_mean), c.x_feat_dim, c.z_feat_dim,
                            c.dec_dim, c.prior_dim], np.int32),
        "floats": np.array([float(model.data_mean), float(model.data_std), c.min_std], np.float32),
    }
    for name, (w, b) in vrnn_products(model.eval()).items():
        a = _f32(w)
        q, scale = quantize_rows(a)
        if np.array_equal(q.astype(np.float32) * scale[:, None], a) and np.abs(q).max() > 1:
            out[name + ".w"], out[name + ".scale"] = q, scale
        else:
            out[name + ".w"] = a
        if b is not None:
            out[name + ".b"] = _f32(b)
    return out
