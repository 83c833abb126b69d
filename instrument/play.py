"""`neuralinst play`: play a model live.

    neuralinst play --model NAME|PATH.onnx [--no-tui --seconds S] [--record F.wav] [--output auto|jack|none|NAME]
                    [--block N] [--ring BLOCKS] [--realtime auto|on|off] [--ui process|inprocess]

Headless (`--no-tui`) it plays for S seconds (or until Ctrl-C) and prints a one-line JSON summary: blocks,
underruns, xruns, measured output latency, model real-time factor, peak level. Otherwise it hands the running
engine to the terminal UI (`instrument.tui.run(engine, preset, args)`), which opens MIDI and runs the textual app
in a child process (`instrument/uiproc.py`) unless `--ui inprocess`.
"""
from __future__ import annotations

import json
import signal
import time

from instrument.engine import Engine, EngineConfig
from instrument.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a preset name or a path to an exported .onnx model")
    parser.add_argument("--no-tui", action="store_true", help="run headless and print a JSON summary at exit")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (headless)")
    parser.add_argument("--record", default=None, metavar="FILE", help="record the output to a .wav/.flac file")
    parser.add_argument("--output", default="auto", help="audio output: auto, jack, none (a silent real-time "
                        "sink, for recording) or a device name/index from `neuralinst devices`")
    parser.add_argument("--block", type=int, default=128, help="frames per audio callback (default 128)")
    parser.add_argument("--ring", type=int, default=4, help="producer ring depth in blocks (default 4)")
    parser.add_argument("--samplerate", type=int, default=None, help="device sample rate (default: the device's)")
    parser.add_argument("--device", default="auto", help="inference device: auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnx", "native"],
                        help="executor: auto (the native C loop where a model has one and it can run), onnx or native")
    parser.add_argument("--realtime", default="auto", choices=["auto", "on", "off"],
                        help="SCHED_FIFO for the producer thread: auto (when the audio server runs real-time, as "
                        "JACK -R does), on, off")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the model's noise")
    parser.add_argument("--midi", default=None, metavar="NAME",
                        help="connect only the MIDI sources whose name contains NAME (default: all; with the UI)")
    parser.add_argument("--midi-name", default="neuralinst", help="name of the instrument's own MIDI input port")
    parser.add_argument("--record-dir", default=".", help="folder for recordings started from the UI")
    parser.add_argument("--mode", default=None, choices=["oneshot", "continuous", "stream"],
                        help="voice mode (default: the preset's)")
    parser.add_argument("--ui", default="process", choices=["process", "inprocess"],
                        help="where the terminal UI runs: its own process (default; its drawing never delays the "
                        "audio callback) or this one")


def resolve_preset(model: str):
    try:
        from instrument.presets import load_preset
    except ModuleNotFoundError as e:
        if e.name != "instrument.presets":
            raise
        from instrument.engine import _OnnxOnly

        if not model.endswith(".onnx"):
            raise UserError("presets are not available in this build; give an .onnx path to --model.") from None
        return _OnnxOnly(model)
    return load_preset(model)


def run(args) -> int:
    if args.seconds is not None and args.seconds <= 0:
        raise UserError("--seconds must be positive.")
    preset = resolve_preset(args.model)
    if args.mode:
        preset.mode = args.mode
    config = EngineConfig(block=args.block, ring_blocks=args.ring, output=args.output,
                          samplerate=args.samplerate, device=args.device, threads=args.threads,
                          backend=args.backend, realtime=args.realtime)
    engine = Engine(config)
    if not args.no_tui:
        try:
            from instrument import tui
        except ModuleNotFoundError as e:
            if e.name != "instrument.tui":
                raise
            raise UserError("the terminal UI is not available in this build; run with --no-tui.") from None
        engine.start(preset, seed=args.seed, record=args.record)
        try:
            return int(tui.run(engine, preset, args) or 0)
        finally:
            if engine._running:
                engine.stop()
    engine.start(preset, seed=args.seed, record=args.record)
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        end = None if args.seconds is None else time.monotonic() + args.seconds
        while not stop["now"] and (end is None or time.monotonic() < end):
            time.sleep(0.05 if end is None else max(0.0, min(0.05, end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stats = engine.stop()
    summary = {
        "blocks": stats.blocks, "underruns": stats.underruns, "xruns": stats.xruns,
        "server_underruns": stats.server_underruns,
        "nonfinite_blocks": stats.nonfinite_blocks,
        "latency_ms": stats.latency_ms, "ring_latency_ms": stats.ring_latency_ms,
        "device_latency_ms": stats.device_latency_ms, "model_rtf": stats.model_rtf, "peak": stats.peak,
        "seconds": stats.elapsed, "samplerate": stats.samplerate, "block": stats.block, "mode": stats.mode,
        "audio_sched": stats.audio_sched, "producer_sched": stats.producer_sched,
        "realtime_refused": stats.realtime_refused, "recording": args.record,
    }
    print(json.dumps(summary))
    return 0
