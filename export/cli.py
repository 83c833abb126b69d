"""`neuralinst export CHECKPOINT --out MODEL.onnx [--fp16 | --weights int8|int4] [--no-verify] [--verify-calls 200]
[--no-native] [--native-half | --native-int8]`.

SampleRNN models also get their native weights beside the graph, MODEL.native.npz (instrument/native: the C
sample loop the runtime prefers on the CPU). The npz carries the ONNX file's metadata plus its seal, so the runtime
can tell that the two belong together. Both executors are verified against the torch model. VRNN models get them
with `--native-int8` (the C step with int8 products: a quarter of the bytes to stream per frame); the products
whose rounding alone moves the audio or state by more than `--keep-error` stay float32, measured first.

`--weights int8|int4` (export/quantize.py) quantises the verified fp32 graph's matrix products for the CPU, where
batch-1 streaming is bound by reading the weights; the per-call error against the fp32 graph is measured and
printed, and a file whose audio moves by more than 5 % RMS per call is refused."""
from __future__ import annotations

import argparse
from pathlib import Path

from instrument.errors import UserError
from instrument.model import native_weights_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a training run folder or one of its checkpoint folders")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and I/O (for GPUs; CPU stays fp32)")
    parser.add_argument("--weights", choices=["fp32", "int8", "int4"], default="fp32",
                        help="matrix-product weights: int8 (~4x smaller) or int4 (~6x) for the CPU (VRNN, WaveGAN; "
                             "not SampleRNN); the error against fp32 is measured and printed")
    parser.add_argument("--min-weights", type=int, default=16384,
                        help="with --weights: products with fewer constant weights stay fp32 (default 16384)")
    parser.add_argument("--keep-error", type=float, default=0.01,
                        help="with --weights: a product whose quantisation alone moves the audio or state by more "
                             "than this relative RMS stays fp32 (default 0.01; 0 quantises nothing, a large "
                             "value everything)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch streaming check")
    parser.add_argument("--verify-calls", type=int, default=200, help="streaming calls to compare (default 200)")
    parser.add_argument("--no-optimise", action="store_true", help="skip onnxruntime's offline graph optimisation")
    parser.add_argument("--name", default=None, help="the model's display name (default: its config name)")
    parser.add_argument("--no-native", action="store_true",
                        help="SampleRNN: do not write the native weights (MODEL.native.npz) beside the model")
    parser.add_argument("--native-half", action="store_true",
                        help="SampleRNN: float16 native matrices (~1.3x faster); the model's weights are rounded "
                             "to float16 first, so the ONNX graph plays the same rounded model")
    parser.add_argument("--native-int8", action="store_true",
                        help="SampleRNN: int8 native matrices with per-row scales (~2.4x faster than float32 on a "
                             "Zen 1 core); VRNN: write native weights with int8 products (the C step; --keep-error "
                             "and --min-weights choose which stay float32). The weights are rounded to that grid "
                             "first, the ONNX graph plays the same rounded model")
    parser.add_argument("--native-verify-calls", type=int, default=60,
                        help="streaming calls comparing the native loop with torch (default 60)")


def run(args: argparse.Namespace) -> int:
    if args.verify_calls < 1:
        raise UserError("--verify-calls must be at least 1.")
    if args.native_verify_calls < 1:
        raise UserError("--native-verify-calls must be at least 1.")
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out} should end in .onnx.")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: no such checkpoint or run folder.")
    # torch only now: argument mistakes are reported in a blink
    from export.onnx_export import ExportError, export_model
    from export.verify import verify_streaming

    try:
        from training.checkpoint import load_model
    except ImportError as e:
        raise UserError(f"cannot load checkpoints: training.checkpoint is unavailable ({e}).") from None
    try:
        model, info = load_model(checkpoint)
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{checkpoint}: cannot load the checkpoint ({e}).") from None
    kind = getattr(model, "kind", "")
    native = (kind == "samplernn" or (kind == "vrnn" and args.native_int8)) and not args.no_native
    if args.weights != "fp32" and (args.fp16 or getattr(model, "kind", "") == "samplernn"):
        raise UserError("--weights int8/int4 applies to float32 VRNN and WaveGAN exports (not --fp16, not SampleRNN: "
                        "a rounding change moves which level SampleRNN draws).")
    if args.native_int8 and args.weights != "fp32":  # the npz is paired with the graph it was written beside
        raise UserError("choose --native-int8 or --weights, not both: the native step has int8 products of its own.")
    if args.native_half and kind != "samplernn":
        raise UserError("--native-half applies to SampleRNN models.")
    if (args.native_half or args.native_int8) and not native:
        raise UserError("--native-half and --native-int8 apply to SampleRNN and VRNN models exported with their "
                        "native weights.")
    if args.native_half and args.native_int8:
        raise UserError("choose --native-half or --native-int8, not both.")
    storage = "int8" if args.native_int8 else "float16" if args.native_half else "float32"
    npz = native_weights_path(out)
    if npz.exists():  # weights of an earlier export would otherwise pair with the new graph
        npz.unlink()
    if args.native_half:
        # Before the ONNX export: the graph and the float16 native matrices must come from the same rounded model
        # (see Model.round_weights_to_half_: rounded in place, the loaded model is never copied).
        try:
            model.round_weights_to_half_()
        except ValueError as e:
            raise UserError(f"--native-half: {e}.") from None
    if args.native_int8 and kind == "vrnn":  # measured product by product: the audible ones stay float32
        from export.native_weights import round_vrnn_to_int8_

        solo = round_vrnn_to_int8_(model, keep_error=args.keep_error, min_weights=args.min_weights)
        kept = [f"{n} ({e:.2%})" if e is not None else f"{n} (small)" for n, e in solo.items()
                if e is None or e > args.keep_error]
        print(f"native int8: {len(solo) - len(kept)} of {len(solo)} products rounded to int8 rows; kept float32: "
              f"{', '.join(kept) or 'none'}")
    elif args.native_int8:  # the same rule, for the int8 grid (Model.round_weights_to_int8_)
        model.round_weights_to_int8_()
    try:
        result = export_model(model, out, info=info, fp16=args.fp16, optimise=not args.no_optimise, name=args.name)
    except ExportError as e:
        raise UserError(f"cannot export {checkpoint}: {e}.") from None
    meta = result.meta
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB, {meta.kind}, {meta.sample_rate} Hz, "
          f"{meta.channels} ch, block {meta.block_size}, {len(meta.state)} state arrays, {meta.precision}) "
          f"in {result.seconds:.1f} s; {'; '.join(result.notes)}")
    if args.no_verify:
        if native:
            _write_native(model, out, npz, storage)
        _quantise(out, args, calls=0)
        return 0
    device = "cpu"
    if args.fp16:  # fp16 is meant for GPUs: verify there when there is one (the CPU provider runs it too, slower)
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            device = "cuda"
    report, drift = verify_streaming(model, out, calls=args.verify_calls, device=device)
    print(report.summary() + (f"; {drift}" if drift else ""))
    if not report.passed:
        out.unlink(missing_ok=True)
        raise UserError(f"the exported graph does not stream like the torch model ({report.failure}); "
                        f"{out} was removed.")
    if native:
        _write_native(model, out, npz, storage)
        _verify_native(model, out, npz, args.native_verify_calls, storage)
    _quantise(out, args, calls=args.verify_calls)
    return 0


def _quantise(out: Path, args: argparse.Namespace, calls: int) -> None:
    """Replace the (verified) fp32 graph at `out` by its int8/int4-weight version, with the error it costs."""
    if args.weights == "fp32":
        return
    from export.quantize import QuantiseError, quantize_file

    try:
        report = quantize_file(out, out, args.weights, calls=calls, min_weights=args.min_weights,
                               keep_error=args.keep_error)
    except QuantiseError as e:
        out.unlink(missing_ok=True)
        raise UserError(f"cannot quantise {out}: {e}; {out} was removed.") from None
    print(f"wrote {out}: {report.summary()}")


def _write_native(model, out: Path, npz: Path, storage: str) -> None:
    """MODEL.native.npz: the weights in the C loop's layout, described by the ONNX file's own metadata and seal."""
    import numpy as np

    from export.native_weights import native_arrays, vrnn_native_arrays
    from instrument.model import SEAL_KEY, read_model_file, scan_onnx_bytes

    data, meta = read_model_file(out)
    meta.extra["onnx_sha256"] = scan_onnx_bytes(data).metadata[SEAL_KEY]  # pairs the two files
    if model.kind == "vrnn":
        arrays = vrnn_native_arrays(model, meta.to_json())
    else:
        arrays = native_arrays(model, meta.to_json(), half=storage == "float16", int8=storage == "int8")
    tmp = npz.with_name(npz.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz"
        np.savez(f, **arrays)
    tmp.replace(npz)
    what = "native VRNN weights, int8 and float32" if model.kind == "vrnn" else f"native SampleRNN weights, {storage}"
    print(f"wrote {npz} ({npz.stat().st_size / 1e6:.2f} MB, {what} matrices)")


def _verify_native(model, out: Path, npz: Path, calls: int, storage: str = "float32") -> None:
    """The native loop, loaded as the runtime loads it, against torch (same rule as the graph's verification).
    A machine that cannot build the loop keeps the weights unverified: another machine may play them."""
    from export.verify import verify_export
    from instrument.model import NATIVE_UNAVAILABLE, load_model

    try:
        load_model(out, device="cpu", backend="native")
    except UserError as e:
        if NATIVE_UNAVAILABLE in str(e):
            print(f"native weights not verified here: {e}")
            return
        npz.unlink(missing_ok=True)
        raise UserError(f"the native weights do not load ({e}); {npz} was removed.") from None
    # int8 matrices: the loop rounds their inputs to 14 bits (export/verify.py says what that changes)
    loose = {"state_tolerance": 2e-3, "boundary_tolerance": 2e-3, "max_flip_rate": 5e-3} if storage == "int8" else {}
    if model.kind == "vrnn":  # no levels to flip: the audio itself follows torch's to the 14-bit input step
        loose = {"tolerance": 1e-3, "state_tolerance": 2e-3, "resync": True}
    report = verify_export(model, out, calls=calls, device="cpu", backend="native", **loose)
    print("native " + report.summary().replace("onnx - torch", "native - torch"))
    if not report.passed:
        npz.unlink(missing_ok=True)
        raise UserError(f"the native loop does not stream like the torch model ({report.failure}); "
                        f"{npz} was removed.")
