"""Offline render speed per runtime backend, end to end: `neuralinst export` then `instrument.render.render` through
`load_model(backend=...)`, on ONE core, for a SampleRNN config with random weights.

    neuralinst bench render [--config samplernn-live] [--seconds 4] [--rounds 3] [--verify-calls 20]
    python -m benchmarks.render_backends ...

Backends: `native` (the C loop, float32 matrices), `native16` (float16 matrices: a second export with
--native-half, whose graph comes from the same rounded model) and `onnx` (the graph in onnxruntime). Each round
renders the same seconds with every backend in turn, so a load change on the shared machine hits all of them;
rates are medians over rounds, by wall clock and by the process's CPU time (the CPU-time rate estimates a
dedicated core). Written to benchmarks/results/render_backends.json.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import pin_to_one_core, print_table, write_result

BACKENDS = ("native", "native16", "onnx")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="samplernn-live", help="a SampleRNN config (random weights, seed 0)")
    p.add_argument("--seconds", type=float, default=4.0, help="audio rendered per backend and round (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--verify-calls", type=int, default=20, help="export verification calls per executor")


def _export(config: str, folder: Path, half: bool, verify_calls: int) -> Path:
    import torch

    from export import cli as export_cli
    from training.checkpoint import save_checkpoint
    from training.configs import build_model, get_config

    run = folder / "run"
    if not run.exists():
        torch.manual_seed(0)
        model = build_model(get_config(config)).eval()
        save_checkpoint(run, 0, model, {}, {"config": model.config_dict()})
    out = folder / ("half.onnx" if half else "model.onnx")
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    argv = [str(run), "--out", str(out), "--verify-calls", str(verify_calls),
            "--native-verify-calls", str(verify_calls)] + (["--native-half"] if half else [])
    if export_cli.run(parser.parse_args(argv)) != 0:
        raise SystemExit(f"export of {config} failed")
    return out


def _time_render(model, seconds: float, seed: int) -> tuple[float, float]:
    from instrument.render import render

    t0, c0 = time.perf_counter(), time.process_time()
    render(model, seconds, seed=seed)
    return time.perf_counter() - t0, time.process_time() - c0


def run(args) -> int:
    from instrument.model import load_model

    core = pin_to_one_core()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        full = _export(args.config, folder, False, args.verify_calls)
        half = _export(args.config, folder, True, args.verify_calls)
        models = {"native": load_model(full, device="cpu", backend="native"),
                  "native16": load_model(half, device="cpu", backend="native"),
                  "onnx": load_model(full, device="cpu", backend="onnx")}
        assert models["native16"].net.half and models["onnx"].backend == "onnx"
        for m in models.values():  # warm-up (library load, onnxruntime's first run)
            _time_render(m, 0.1, 0)
        rates = {k: ([], []) for k in BACKENDS}
        for r in range(args.rounds):
            for kind in BACKENDS:
                wall, cpu = _time_render(models[kind], args.seconds, seed=r)
                rates[kind][0].append(args.seconds / wall)
                rates[kind][1].append(args.seconds / cpu)
    figures = {"config": args.config, "seconds_per_round": args.seconds, "rounds": args.rounds, "core": core,
               "sample_rate": models["onnx"].sample_rate, "block_size": models["onnx"].block_size}
    for kind in BACKENDS:
        figures[f"{kind}_rtf_wall"], figures[f"{kind}_rtf_cpu"] = (float(np.median(v)) for v in rates[kind])
    rows = []
    for kind in BACKENDS:
        figures[f"{kind}_vs_onnx_cpu"] = figures[f"{kind}_rtf_cpu"] / figures["onnx_rtf_cpu"]
        rows.append([kind, figures[f"{kind}_rtf_wall"], figures[f"{kind}_rtf_cpu"], figures[f"{kind}_vs_onnx_cpu"]])
    print_table(["backend", "x real time (wall)", "x real time (CPU)", "vs onnx (CPU)"], rows)
    print(write_result("render_backends", figures))
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
