"""`neuralinst export CHECKPOINT --out MODEL.onnx [--fp16] [--no-verify] [--verify-calls 200]`."""
from __future__ import annotations

import argparse
from pathlib import Path

from instrument.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a training run folder or one of its checkpoint folders")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and I/O (for GPUs; CPU stays fp32)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch streaming check")
    parser.add_argument("--verify-calls", type=int, default=200, help="streaming calls to compare (default 200)")
    parser.add_argument("--no-optimise", action="store_true", help="skip onnxruntime's offline graph optimisation")
    parser.add_argument("--name", default=None, help="the model's display name (default: its config name)")


def run(args: argparse.Namespace) -> int:
    if args.verify_calls < 1:
        raise UserError("--verify-calls must be at least 1.")
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out} should end in .onnx.")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: no such checkpoint or run folder.")
    # torch only now: argument mistakes are reported in a blink
    from export.onnx_export import ExportError, export_model
    from export.verify import verify_export

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
    try:
        result = export_model(model, out, info=info, fp16=args.fp16, optimise=not args.no_optimise, name=args.name)
    except ExportError as e:
        raise UserError(f"cannot export {checkpoint}: {e}.") from None
    meta = result.meta
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB, {meta.kind}, {meta.sample_rate} Hz, "
          f"{meta.channels} ch, block {meta.block_size}, {len(meta.state)} state arrays, {meta.precision}) "
          f"in {result.seconds:.1f} s; {'; '.join(result.notes)}")
    if args.no_verify:
        return 0
    device = "cpu"
    if args.fp16:  # fp16 is meant for GPUs: verify there when there is one (the CPU provider runs it too, slower)
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            device = "cuda"
    report = verify_export(model, out, calls=args.verify_calls, device=device)
    print(report.summary())
    if not report.passed:
        out.unlink(missing_ok=True)
        raise UserError(f"the exported graph does not stream like the torch model ({report.failure}); "
                        f"{out} was removed.")
    return 0
