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
