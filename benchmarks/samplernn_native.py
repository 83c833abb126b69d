"""SampleRNN generation speed on ONE core: the native C loop vs the ONNX graph vs torch eager, same weights.

    neuralinst bench native [--configs samplernn-live,samplernn-tiny] [--seconds 2] [--rounds 3] [--quick]
                            [--executors native,native16,native8,onnx,torch]
    python -m benchmarks.samplernn_native ...

(`--configs samplernn-paper --executors native,torch` measures the thesis-sized model without the minutes-long
ONNX export of its 64 M parameters.)

Executors: `native` (the C loop, float32 weights), `native16` (the same with float16 matrices, from the model
rounded by round_weights_to_half_), `native8` (int8 matrices with per-row scales, quantised from the float32 weights
as they are loaded: NativeSampleRNN(int8=True)), `onnx` (the exported graph through instrument.model), `torch`
(eager `step`).
Every executor generates one top-tier frame per call with its state fed back, batch 1, one thread, the process
pinned to one core (os.sched_setaffinity). Rounds alternate between executors so a noisy machine slows all of them
alike. Random seeded weights (speed does not depend on training). Figures: samples/s and x real time (> 1 is
faster than real time) by the wall clock and by the process's CPU time (on a shared machine the core is not ours
alone: CPU-time rates estimate a dedicated core, wall-clock rates are what this run got), and the native loop's
per-call time against the call's audio duration (its deadline). Written to benchmarks/results/samplernn_native.json.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import pin_to_one_core, print_table, stats_ms, write_result

DEFAULT_CONFIGS = ["samplernn-live", "samplernn-tiny"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated config names")
    p.add_argument("--seconds", type=float, default=2.0, help="audio per native round (default 2 s)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--quick", action="store_true", help="a short run")
    p.add_argument("--core", type=int, default=None, help="core to pin to (default: the last)")
    p.add_argument("--executors", default="native,native16,native8,onnx,torch",
                   help="which executors to time (default: all)")
    p.add_argument("--name", default="samplernn_native", help="result file name under benchmarks/results/")
    p.add_argument("--quality-run", default=None, metavar="RUN",
                   help="also measure what the native storages cost a trained model: teacher-forced bits/sample of "
                        "RUN (a training run folder) on --quality-data's test split, float32 vs float16 vs int8")
    p.add_argument("--quality-data", default=None, metavar="DATASET", help="the data set folder for --quality-run")
    p.add_argument("--quality-seconds", type=float, default=32.0, help="seconds of test audio (default 32)")


def _time_native(net, calls: int, rng) -> tuple[float, list[float]]:
    out = np.zeros(net.block_size, np.float32)
    noise = rng.random((calls, net.block_size), dtype=np.float32)
    per_call, per_call8 = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(calls):
        t = time.perf_counter()
        net.generate_frame(1.0, noise[k], out)
        per_call.append(time.perf_counter() - t)
    return (time.perf_counter() - t0, time.process_time() - c0), per_call


def _time_onnx(runtime, calls: int) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        runtime.step()
    return time.perf_counter() - t0, time.process_time() - c0


def _time_torch(model, calls: int, generator) -> tuple[float, float]:
    import torch

    state = model.initial_state(1)
    with torch.inference_mode():
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(calls):
            _, state = model.step(model.default_controls(1, generator), state)
        return time.perf_counter() - t0, time.process_time() - c0


def measure_config(name: str, seconds: float, rounds: int, workdir: Path,
                   executors: tuple[str, ...] = ("native", "native16", "native8", "onnx", "torch")) -> dict:
    import torch

    from export.native_weights import write_native_weights
    from export.onnx_export import export_model
    from instrument.model import load_model
    from instrument.native.samplernn import NativeSampleRNN
    from training.configs import build_model, get_config

    torch.manual_seed(0)
    model = build_model(get_config(name)).eval()
    runtime = None
    if "onnx" in executors:
        export_model(model, workdir / f"{name}.onnx")
        runtime = load_model(workdir / f"{name}.onnx", device="cpu", threads=1, batch=1)
        runtime.reset(0)
    write_native_weights(model, workdir / f"{name}.npz")
    net = NativeSampleRNN(workdir / f"{name}.npz")
    net16 = None
    if "native16" in executors:
        rounded = build_model(get_config(name)).eval()  # a twin (deepcopy and weight norm's parametrisations
        rounded.load_state_dict(model.state_dict())  # do not mix), then rounded
        rounded.round_weights_to_half_()
        net16 = NativeSampleRNN(write_native_weights(rounded, workdir / f"{name}-f16.npz", half=True))
    net8 = NativeSampleRNN(workdir / f"{name}.npz", int8=True) if "native8" in executors else None
    block, sr = net.block_size, net.sample_rate
    native_calls = max(4, int(seconds * sr / block))
    # the slower executors get less audio per round so a round stays a few seconds; rates are per sample anyway
    onnx_calls = max(3, native_calls // 8)
    torch_calls = max(2, native_calls // 40)
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    _time_native(net, 2, rng)  # warm-up
    for extra in (net16, net8):
        if extra is not None:
            _time_native(extra, 2, rng)
    if runtime is not None:
        _time_onnx(runtime, 1)
    if "torch" in executors:
        _time_torch(model, 1, g)
    rates = {k: ([], []) for k in executors}  # samples/s by (wall clock, CPU time)
    per_call, per_call8 = [], []

    def record(kind, samples, times):
        for store, t in zip(rates[kind], times):
            store.append(samples / max(t, 1e-9))

    for _ in range(rounds):
        times, pc = _time_native(net, native_calls, rng)
        record("native", native_calls * block, times)
        per_call += pc
        if net16 is not None:
            times, _ = _time_native(net16, native_calls, rng)
            record("native16", native_calls * block, times)
        if net8 is not None:
            times, pc = _time_native(net8, native_calls, rng)
            record("native8", native_calls * block, times)
            per_call8 += pc
        if runtime is not None:
            record("onnx", onnx_calls * block, _time_onnx(runtime, onnx_calls))
        if "torch" in executors:
            record("torch", torch_calls * block, _time_torch(model, torch_calls, g))
    deadline = block / sr
    row = {
        "config": name, "sample_rate": sr, "block_size": block,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "dim": model.config.dim, "n_rnn": model.config.n_rnn, "frame_sizes": list(model.config.frame_sizes),
        "rounds": rounds, "native_call_ms": stats_ms(per_call), "call_deadline_ms": deadline * 1e3,
        "native_calls_over_deadline": float(np.mean(np.asarray(per_call) > deadline)),
    }
    if per_call8:
        row["native8_call_ms"] = stats_ms(per_call8)
        row["native8_calls_over_deadline"] = float(np.mean(np.asarray(per_call8) > deadline))
    for kind, (wall, cpu) in rates.items():
        row[f"{kind}_samples_per_s"] = float(np.median(wall))
        row[f"{kind}_rtf"] = float(np.median(wall)) / sr
        row[f"{kind}_cpu_samples_per_s"] = float(np.median(cpu))
        row[f"{kind}_cpu_rtf"] = float(np.median(cpu)) / sr
        row[f"{kind}_rounds_samples_per_s"] = wall
    if "onnx" in rates:
        row["native_over_onnx"] = row["native_samples_per_s"] / row["onnx_samples_per_s"]
    if "torch" in rates:
        row["native_over_torch"] = row["native_samples_per_s"] / row["torch_samples_per_s"]
    return row


def storage_cost(run: str, data: str, seconds: float) -> dict:
    """Teacher-forced bits/sample of a trained SampleRNN on a data set's test split, with its streamed matrices as
    trained (float32), rounded to float16 (export --native-half) and to the int8 grid (export --native-int8)."""
    import torch

    from training.checkpoint import load_model
    from training.data import INT16_SCALE

    test = np.load(Path(data) / "test.npy", mmap_mode="r")
    out = {"run": run, "data": data}
    for storage in ("float32", "float16", "int8"):
        model, _ = load_model(Path(run))
        model.eval()
        if storage == "float16":
            model.round_weights_to_half_()
        elif storage == "int8":
            model.round_weights_to_int8_()
        per_chunk = max(model.block_size, int(4 * model.config.sample_rate) // model.block_size * model.block_size)
        chunks = max(1, min(len(test), int(seconds * model.config.sample_rate) // per_chunk))
        nats = samples = 0.0
        with torch.no_grad():
            for i in range(chunks):
                x = torch.from_numpy(np.asarray(test[i, :1, :per_chunk], np.float32) / INT16_SCALE)[None]
                state = None
                for piece in torch.split(x, model.config.tbptt_samples, dim=-1):
                    metrics, state = model.losses(piece, state)
                    nats += float(metrics["loss"]) * piece.shape[-1]
                    samples += piece.shape[-1]
        out[f"{storage}_bits_per_sample"] = nats / samples / math.log(2)
        out["seconds"] = samples / model.config.sample_rate
    for storage in ("float16", "int8"):
        out[f"{storage}_cost_bits"] = out[f"{storage}_bits_per_sample"] - out["float32_bits_per_sample"]
    return out


def run(args) -> int:
    import torch

    core = pin_to_one_core(args.core)
    torch.set_num_threads(1)
    rounds, seconds = (2, 0.5) if args.quick else (args.rounds, args.seconds)
    executors = tuple(e for e in args.executors.split(",") if e)
    if "native" not in executors or not set(executors) <= {"native", "native16", "native8", "onnx", "torch"}:
        raise SystemExit("--executors: a comma-separated subset of native,native16,native8,onnx,torch with native")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [c for c in args.configs.split(",") if c]:
            print(f"measuring {name} ...", flush=True)
            rows.append(measure_config(name, seconds, rounds, Path(tmp), executors))
    print(f"\nSampleRNN generation, batch 1, one thread on core {core} (x real time; > 1 is faster than real time)")
    def cell(r, key, fmt=None):
        v = r.get(key)
        return "-" if v is None else (format(v, fmt) if fmt else v)

    print_table(
        ["config", "params", "native smp/s", "native xRT", "native16 xRT", "native8 xRT", "onnx smp/s", "onnx xRT",
         "torch smp/s", "torch xRT", "native/onnx", "call p50 ms", "call p99 ms", "int8 p99 ms", "deadline ms"],
        [[r["config"], f"{r['parameters'] / 1e6:.2f}M", cell(r, "native_samples_per_s", ".0f"), r["native_rtf"],
          cell(r, "native16_rtf"), cell(r, "native8_rtf"), cell(r, "onnx_samples_per_s", ".0f"), cell(r, "onnx_rtf"),
          cell(r, "torch_samples_per_s", ".0f"), cell(r, "torch_rtf"), cell(r, "native_over_onnx"),
          r["native_call_ms"]["p50"], r["native_call_ms"]["p99"], r.get("native8_call_ms", {}).get("p99", "-"),
          r["call_deadline_ms"]] for r in rows],
    )
    print(f"\nThe same by CPU time (an estimate for a dedicated core; load average {os.getloadavg()[0]:.1f})")
    print_table(["config", "native xRT", "native16 xRT", "native8 xRT", "onnx xRT", "torch xRT"],
                [[r["config"], r["native_cpu_rtf"], cell(r, "native16_cpu_rtf"), cell(r, "native8_cpu_rtf"),
                  cell(r, "onnx_cpu_rtf"), cell(r, "torch_cpu_rtf")] for r in rows])
    figures = {"core": core, "rows": rows}
    if args.quality_run:
        if not args.quality_data:
            raise SystemExit("--quality-run needs --quality-data")
        cost = storage_cost(args.quality_run, args.quality_data, args.quality_seconds)
        figures["storage_cost"] = cost
        print(f"\nWhat the storage costs {args.quality_run} (teacher-forced on {cost['seconds']:.0f} s of "
              f"{args.quality_data}'s test split; bits/sample, lower is better)")
        print_table(["storage", "bits/sample", "cost vs float32"],
                    [[k, cost[f"{k}_bits_per_sample"], cost.get(f"{k}_cost_bits", 0.0)]
                     for k in ("float32", "float16", "int8")])
    path = write_result(args.name, figures)
    print(f"\nwritten: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
