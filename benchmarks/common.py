"""What every benchmark shares: machine facts, pinning, timing statistics and the JSON result file."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("numpy", "onnxruntime", "torch", "onnx", "sounddevice", "python-rtmidi", "pyo", "textual", "soxr")


def pin_to_one_core(core: int | None = None) -> int:
    """Run this process on ONE core (the last one by default, away from most system work), single-threaded."""
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1] if core is None else core
    os.sched_setaffinity(0, {core})
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    return core


def machine() -> dict:
    # The model name alone ("AMD EPYC") hides the generation, and the hosts behind these machines differ: the same
    # native SampleRNN loop ran 3.04x real time on the host of 2026-12-03 and 0.80x on a family 23 model 1 (Zen 1)
    # host on 2026-12-05. Family/model/cache say which one a figure came from.
    cpu, cpu_id = "", {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and not cpu:
                cpu = value
            elif key in ("cpu family", "model", "stepping", "cache size") and key not in cpu_id:
                cpu_id[key] = value
            elif not line.strip() and cpu:
                break  # the first processor's block is enough
    except OSError:
        pass
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpu": cpu, "cpu_id": cpu_id, "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()), "versions": versions, "commit": commit,
    }


def stats_ms(seconds: list[float] | np.ndarray) -> dict:
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p1": float(np.percentile(a, 1)), "p50": float(np.median(a)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def write_result(name: str, figures: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "figures": figures}, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
