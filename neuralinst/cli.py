"""The `neuralinst` command: a thin dispatcher.

Each sub-command lives in the layer that owns it and is imported only when chosen, so `neuralinst play`
never loads torch. A command module exposes `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from instrument.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("training.prepare", "decode, clean, chunk and split audio into a data set"),
    "train": ("training.train", "train a model config on a data set"),
    "export": ("export.cli", "export a checkpoint to a streaming ONNX model"),
    "render": ("instrument.render", "generate audio offline through the live runtime"),
    "play": ("instrument.play", "play a model live (MIDI, terminal UI, recording)"),
    "bench": ("benchmarks.cli", "run the benchmarks and write benchmarks/results/"),
    "eval": ("instrument.evaluate", "measure how close a model's renders are to a data set"),
    "devices": ("instrument.devices", "list audio outputs and MIDI inputs"),
    "presets": ("instrument.presets", "list the shipped and user presets"),
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            return None  # the command's module does not exist yet
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="neuralinst", description="A real-time neural instrument.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(f"neuralinst: unknown command {name!r}; choose one of {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    if name == "play" and "numpy" not in sys.modules:
        # numpy's OpenBLAS keeps worker threads that spin after each matrix product (perf: ~1.5 % of a live
        # SampleRNN session in blas_thread_server), on whichever core is free: the audio's. The live engine's
        # products are small; one thread does them. (Read when numpy loads, so set before the first import.)
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    module = _load(module_name)
    if module is None or not hasattr(module, "run"):
        print(f"neuralinst: the {name!r} command is not built yet.", file=sys.stderr)
        return 2
    cmd_parser = argparse.ArgumentParser(prog=f"neuralinst {name}", description=help_text)
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"neuralinst {name}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"neuralinst {name}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
