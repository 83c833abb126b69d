"""Real-time factor and per-call latency of every model config, onnxruntime vs torch eager, on ONE core.

    neuralinst bench rtf [--configs samplernn-live,vrnn-paper,...] [--weights fp32,int8,int4] [--quick]

Both executors run the same weights (random, seeded: speed does not depend on training) the same way: one
`step` call after another with the state fed back, batch 1, one thread, the process pinned to one core. Torch and
onnxruntime are timed in alternating rounds, so a noisy machine slows both alike and the ratio holds.

Figures: seconds of audio per second of compute (× real time) for each, their ratio, the distribution of
onnxruntime's per-call time against the call's own audio duration (a call slower than the audio it makes would
miss the deadline of a live stream), and batched throughput (streams × real time) for offline rendering.

`--weights fp32,int8,int4` also times the int8/int4-weight graphs (export/quantize.py) of the VRNN and WaveGAN
configs in the same alternating rounds, with their teacher-forced per-call error against the fp32 graph.
`native-int8` times VRNN's native C step (instrument/native/vrnn.c) with int8 products, the same way, with its
per-call error against the fp32 torch model (what `neuralinst export --native-int8` writes).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from instrument.errors import UserError
from benchmarks.common import pin_to_one_core, print_table, stats_ms, write_result

DEFAULT_CONFIGS = [
    "samplernn-tiny", "samplernn-live", "samplernn-paper",
    "vrnn-tiny", "vrnn-live", "vrnn-paper",
    "wavegan-tiny", "wavegan-live", "wavegan-paper",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated config names")
    p.add_argument("--seconds", type=float, default=2.0, help="audio per round for the fast models (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating torch/onnx rounds (default 3)")
    p.add_argument("--batches", default="1,8,32", help="batch sizes for the throughput table")
    p.add_argument("--quick", action="store_true", help="a short run (fewer rounds, less audio)")
    p.add_argument("--core", type=int, default=None, help="core to pin to (default: the last)")
    p.add_argument("--weights", default="fp32",
                   help="comma-separated weight schemes to time: fp32,int8,int4 (quantised graphs: VRNN, WaveGAN "
                        "only), native-int8 (VRNN's C step with int8 products)")
    p.add_argument("--name", default="rtf", help="result file name under benchmarks/results/")


def _calls_for(meta, seconds: float, budget_rtf_guess: float) -> int:
    # Slow models (paper SampleRNN in torch runs at ~0.005x) get fewer calls so one round stays near a few seconds.
    audio = seconds * min(1.0, max(budget_rtf_guess, 0.02))
    return max(3, int(np.ceil(audio * meta.sample_rate / meta.block_size)))


def _time_torch(model, meta, calls: int, generator) -> float:
    import torch

    state = model.initial_state(1)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(calls):
            _, state = model.step(model.default_controls(1, generator), state)
        return time.perf_counter() - t0


def _time_onnx(runtime, calls: int) -> tuple[float, list[float]]:
    per_call = []
    t0 = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        runtime.step()
        per_call.append(time.perf_counter() - t)
    return time.perf_counter() - t0, per_call


# Random weights are unlike trained ones in which products quantisation hurts, so the products left fp32 are the
# ones the sensitivity rule keeps in the shipped trained model of the same family (same layer names).
KEEP_LIKE = {"vrnn": "presets/vrnn-piano/model.onnx", "wavegan": "presets/wavegan-piano/model.onnx"}


def _keep_like(kind: str, scheme: str) -> tuple[list[str] | None, str | None]:
    from export.quantize import kept_products

    path = Path(__file__).resolve().parent.parent / KEEP_LIKE.get(kind, "-")
    if not path.is_file():
        return None, None
    return kept_products(path, scheme), str(path.relative_to(path.parent.parent.parent))


def _native_keep_like() -> tuple[set[str] | None, str | None]:
    """The products the shipped VRNN preset's native weights keep float32 (None: no such file here)."""
    path = Path(__file__).resolve().parent.parent / "presets/vrnn-piano/model.native.npz"
    if not path.is_file():
        return None, None
    with np.load(path) as f:
        kept = {k[:-2] for k in f.files if k.endswith(".w") and k[:-2] + ".scale" not in f.files}
    return kept, str(path.relative_to(path.parent.parent.parent))


class _NativeReport:
    """What quantize_file's report gives the table, for the native int8 step."""

    def __init__(self, model, path: Path, kept: list[str], like: str | None, calls: int = 50):
        import torch

        from export.quantize import _rel_rms
        from instrument.native.vrnn import NativeVRNN

        net = NativeVRNN(path)
        self.bytes_after, self.matmuls, self.kept_like = path.stat().st_size, net.int8_products, like
        self.bytes_before = 4 * sum(p.numel() for p in model.parameters())
        self.kept = [{"product": k} for k in sorted(kept)]
        # teacher-forced per call against the float32 torch model: both from torch's state, same controls
        g = torch.Generator().manual_seed(0)
        state, audio_err, state_err = model.initial_state(1), [], []
        with torch.inference_mode():
            for _ in range(calls):
                controls = model.default_controls(1, g)
                a_t, nxt = model.step(controls, state)
                a_n, nxt_n = net.step({k: v.numpy() for k, v in controls.items()},
                                      {k: v.numpy() for k, v in state.items()})
                audio_err.append(_rel_rms(a_n, a_t.numpy()))
                state_err.append(_rel_rms(nxt_n["h"], nxt["h"].numpy()))
                state = nxt
        self.audio_rel_rms, self.state_rel_rms = float(np.mean(audio_err)), float(np.mean(state_err))


def _native_int8(model, workdir: Path, name: str):
    """(runtime, report) of the native int8 step of `model` (random weights: the products kept float32 are those
    of the shipped preset's native file, or none)."""
    import copy

    import torch

    from export.native_weights import _round_rows_, vrnn_native_arrays, vrnn_products
    from export.onnx_export import prepare_meta
    from instrument.native.vrnn import load_native_model

    kept, like = _native_keep_like()
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for product, (w, _) in vrnn_products(rounded).items():
            if product not in (kept or set()):
                _round_rows_(w)
    path = workdir / f"{name}.native.npz"
    with open(path, "wb") as f:
        np.savez(f, **vrnn_native_arrays(rounded, prepare_meta(rounded, None).to_json()))
    runtime = load_native_model(path)
    runtime.reset(0)
    return runtime, _NativeReport(model, path, sorted(kept or ()), like)


def measure_config(name: str, seconds: float, rounds: int, batches: list[int], workdir: Path,
                   schemes: tuple[str, ...] = ()) -> dict:
    import torch

    from export.onnx_export import export_model
    from instrument.model import load_model
    from training.configs import build_model, get_config

    torch.manual_seed(0)
    model = build_model(get_config(name)).eval()
    meta = model.stream_meta()
    path = workdir / f"{name}.onnx"
    export_model(model, path)
    runtime = load_model(path, device="cpu", threads=1, batch=1)
    runtime.reset(0)
    quantised = {}  # scheme -> (runtime, report)
    if meta.kind != "samplernn":
        from export.quantize import quantize_file

        for scheme in schemes:
            if scheme == "native-int8":
                if meta.kind == "vrnn":
                    quantised[scheme] = _native_int8(model, workdir, name)
                continue
            qpath = workdir / f"{name}-{scheme}.onnx"
            keep, like = _keep_like(meta.kind, scheme)
            report = quantize_file(path, qpath, scheme, calls=50, max_error=float("inf"),  # report, never refuse
                                   keep=keep, keep_error=None)
            report.kept_like = like
            quantised[scheme] = (load_model(qpath, device="cpu", threads=1, batch=1), report)
            quantised[scheme][0].reset(0)
    guess = {"samplernn": 0.01 if "paper" in name or "dadabots" in name else 0.1}.get(meta.kind, 1.0)
    calls = _calls_for(meta, seconds, guess)
    g = torch.Generator().manual_seed(0)
    _time_torch(model, meta, 1, g)  # warm-up both
    _time_onnx(runtime, 1)
    for q, _ in quantised.values():
        _time_onnx(q, 1)
    audio_per_round = calls * meta.block_size / meta.sample_rate
    torch_rtf, onnx_rtf, per_call = [], [], []
    q_rtf: dict[str, list[float]] = {s: [] for s in quantised}
    q_calls: dict[str, list[float]] = {s: [] for s in quantised}
    for _ in range(rounds):
        torch_rtf.append(audio_per_round / _time_torch(model, meta, calls, g))
        total, pc = _time_onnx(runtime, calls)
        onnx_rtf.append(audio_per_round / total)
        per_call += pc
        for scheme, (q, _) in quantised.items():
            total, pc = _time_onnx(q, calls)
            q_rtf[scheme].append(audio_per_round / total)
            q_calls[scheme] += pc
    ratios = [o / t for o, t in zip(onnx_rtf, torch_rtf)]
    deadline_s = meta.block_size / meta.sample_rate
    row = {
        "config": name, "kind": meta.kind, "sample_rate": meta.sample_rate, "block_size": meta.block_size,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "torch_eager_rtf": float(np.median(torch_rtf)), "onnx_rtf": float(np.median(onnx_rtf)),
        "onnx_over_torch": float(np.median(ratios)), "rounds": rounds, "audio_per_round_s": audio_per_round,
        "call_ms": stats_ms(per_call), "call_deadline_ms": deadline_s * 1e3,
        "calls_over_deadline": float(np.mean(np.asarray(per_call) > deadline_s)),
        "batched": [],
        "weights": {},
    }
    for scheme, (_, report) in quantised.items():
        r = float(np.median(q_rtf[scheme]))
        row["weights"][scheme] = {
            "onnx_rtf": r, "over_fp32": float(np.median([a / b for a, b in zip(q_rtf[scheme], onnx_rtf)])),
            "call_ms": stats_ms(q_calls[scheme]), "bytes": report.bytes_after, "fp32_bytes": report.bytes_before,
            "audio_rel_rms": report.audio_rel_rms, "state_rel_rms": report.state_rel_rms,
            "products": report.matmuls, "kept_fp32": [k["product"] for k in report.kept],
            "kept_as_in": report.kept_like,
        }
    for b in batches:
        if b == 1:
            row["batched"].append({"batch": 1, "streams_x_rtf": row["onnx_rtf"]})
            continue
        rb = load_model(path, device="cpu", threads=1, batch=b)
        rb.reset(0)
        n = max(2, calls // 4)
        rb.step()
        total, _ = _time_onnx(rb, n)
        row["batched"].append({"batch": b, "streams_x_rtf": b * n * deadline_s / total})
    return row


def run(args) -> int:
    core = pin_to_one_core(args.core)
    rounds, seconds = (2, 0.5) if args.quick else (args.rounds, args.seconds)
    batches = [int(b) for b in args.batches.split(",") if b]
    names = [c for c in args.configs.split(",") if c]
    schemes = tuple(w for w in args.weights.split(",") if w and w != "fp32")
    unknown = [w for w in schemes if w not in ("int8", "int4", "native-int8")]
    if unknown:
        raise UserError(f"unknown weight scheme {unknown[0]!r} (expected fp32, int8, int4 or native-int8).")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"measuring {name} ...", flush=True)
            rows.append(measure_config(name, seconds, rounds, batches, Path(tmp), schemes))
    print(f"\nReal-time factor, batch 1, one thread on core {core} (x real time; > 1 is faster than real time)")
    print_table(
        ["config", "params", "torch eager", "onnxruntime", "ratio", "call p50 ms", "call p99 ms", "deadline ms",
         "late calls"],
        [[r["config"], f"{r['parameters'] / 1e6:.2f}M", r["torch_eager_rtf"], r["onnx_rtf"], r["onnx_over_torch"],
          r["call_ms"]["p50"], r["call_ms"]["p99"], r["call_deadline_ms"], f"{100 * r['calls_over_deadline']:.1f}%"]
         for r in rows],
    )
    print("\nBatched throughput, onnxruntime, one thread (streams x real time)")
    print_table(["config"] + [f"batch {b['batch']}" for b in rows[0]["batched"]] if rows else ["config"],
                [[r["config"]] + [b["streams_x_rtf"] for b in r["batched"]] for r in rows])
    quant_rows = [[r["config"], f"{scheme} ({len(w['kept_fp32'])} fp32)", f"{w['bytes'] / 1e6:.1f} MB", r["onnx_rtf"], w["onnx_rtf"], w["over_fp32"],
                   w["call_ms"]["p99"], f"{100 * w['audio_rel_rms']:.2f}%", f"{100 * w['state_rel_rms']:.2f}%"]
                  for r in rows for scheme, w in r["weights"].items()]
    if quant_rows:
        print("\nQuantised weights, onnxruntime (native-int8: the C step), batch 1, one thread (error: teacher-forced "
              "per call vs fp32; the products kept fp32 are those the trained preset of the family needs)")
        print_table(["config", "weights", "size", "fp32 x rt", "x rt", "over fp32", "call p99 ms", "audio err",
                     "state err"], quant_rows)
    path = write_result(args.name, {"core": core, "weights": ["fp32", *schemes], "rows": rows})
    print(f"\nwritten: {path}")
    return 0
