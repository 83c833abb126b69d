"""`neuralinst bench NAME`: dispatch to one benchmark module (each has add_arguments/run, like the CLI)."""
from __future__ import annotations

import argparse
import importlib

from instrument.errors import UserError

BENCHMARKS = {
    "rtf": ("benchmarks.rtf", "real-time factor and per-call latency: onnxruntime vs torch eager, one core"),
    "native": ("benchmarks.samplernn_native", "SampleRNN sample loop: native C vs ONNX graph vs torch eager"),
    "render": ("benchmarks.render_backends", "SampleRNN render speed per runtime backend (native, native16, onnx)"),
    "note": ("benchmarks.note_latency", "note-on -> sound through a real JACK server"),
    "switch": ("benchmarks.switch_latency", "program change -> new model audible"),
    "endurance": ("benchmarks.endurance", "N minutes of play with UI, CC stream and a CPU hog"),
    "quality": ("benchmarks.preset_quality", "re-run eval for each shipped preset against its card"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options (see NAME --help)")


def run(args) -> int:
    module_name, help_text = BENCHMARKS[args.name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise UserError(f"the {args.name!r} benchmark is not built yet.", exit_code=2) from None
        raise
    parser = argparse.ArgumentParser(prog=f"neuralinst bench {args.name}", description=help_text)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.rest)) or 0)
