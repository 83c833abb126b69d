"""Endurance: N minutes of play with the terminal UI running, a MIDI stream of CC moves and notes, and a CPU hog.

    neuralinst bench endurance [--minutes 10] [--config vrnn-tiny] [--cc-rate 50]
                               [--ui auto|process|inprocess|none] [--no-hog] [--quick] [--server NAME]

The instrument is wired as on stage: `Engine` → PortAudio → a private JACK server, the mapper of
`instrument.mapping`, the frame-stamped JACK MIDI input, and the textual UI (`instrument.tui`) running headless through
`App.run_test()` (it redraws and polls the engine's stats as it would in a terminal): in its own process, as
`neuralinst play` runs it (`--ui process`, the default: `instrument.uiproc`), or in this process competing for the
GIL with the audio callback (`--ui inprocess`, as `play --ui inprocess`). A measuring JACK client (`note_latency.Probe`) plays the MIDI: `--cc-rate` CC messages
per second, round-robin over the temperature, filter, send and first four latent knobs of the default mapping as
slow sine sweeps, plus a note every 250 ms (held 125 ms; the stream preset resets on each note). A busy-loop
process pinned to another core stands in for whatever else the machine runs.

Reported per minute (the last one may be partial): the engine's underruns (the ring had less than a block:
silence was played) and xruns (PortAudio status flags), and the JACK server's xruns seen by the probe. The
target is 0 underruns in 10 minutes; the suite runs `--quick` (20 s).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import inspect
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import print_table
from benchmarks.note_latency import RATE, Instrument, JackSession, Probe, export_configs, make_preset, save
from instrument.errors import UserError

CC_SWEEPS = (21, 25, 26, 27, 70, 71, 72, 73)  # temperature, filter.cutoff, delay/reverb send, latent.0-3
NOTE_EVERY = 0.25
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
SAMPLE_EVERY = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=10.0, help="how long to play (default 10)")
    p.add_argument("--config", default="vrnn-tiny", help="model config to play (default vrnn-tiny)")
    p.add_argument("--cc-rate", type=float, default=50.0, help="CC messages per second (default 50)")
    p.add_argument("--ui", default="auto", choices=["auto", "process", "inprocess", "none"],
                   help="run the textual UI headless: in its own process as `neuralinst play` does (auto, process), "
                   "in the engine's process (inprocess), or not at all")
    p.add_argument("--no-hog", action="store_true", help="no CPU hog on the other core")
    p.add_argument("--quick", action="store_true", help="a short run (20 s)")
    p.add_argument("--seconds", type=float, default=None, help="play this many seconds (overrides --minutes)")
    p.add_argument("--realtime", action="store_true", help="run the private JACK server with realtime scheduling "
                   "(SCHED_FIFO, as on stage; needs the rtprio privilege)")
    p.add_argument("--server", default=None, help="use this running JACK server instead of a private one")
    p.add_argument("--models", default=None, help="folder for the exported models (default: a temporary one)")
    p.add_argument("--out", default=None, help="folder for the JSON result (default benchmarks/results/)")
    p.add_argument("--name", default="endurance", help="result file name (default endurance)")


def midi_schedule(seconds: float, cc_rate: float, lead: int) -> list[tuple[int, bytes]]:
    events = []
    if cc_rate > 0:
        n = int(seconds * cc_rate)
        for i in range(n):
            cc = CC_SWEEPS[i % len(CC_SWEEPS)]
            t = i / cc_rate
            phase = 2 * math.pi * (t / 7.0 + CC_SWEEPS.index(cc) / len(CC_SWEEPS))
            value = int(round(63.5 + 63.5 * math.sin(phase)))
            events.append((lead + int(t * RATE), bytes([0xB0, cc, value])))
    for i in range(int(seconds / NOTE_EVERY)):
        f = lead + int(i * NOTE_EVERY * RATE)
        note = 48 + (i * 7) % 25
        events.append((f, bytes([0x90, note, 90])))
        events.append((f + int(NOTE_EVERY / 2 * RATE), bytes([0x80, note, 0])))
    return events


def start_hog(core: int | None) -> subprocess.Popen | None:
    """A busy loop on `core` (None: no hog)."""
    if core is None:
        return None

    def pin():
        os.sched_setaffinity(0, {core})
        # Die with the benchmark: a hog orphaned by a killed run would go on eating the core for good.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def hog_core() -> int | None:
    cores = sorted(os.sched_getaffinity(0))
    return cores[0] if len(cores) > 1 else None


def find_app(engine, preset, performance):
    """The instrument's textual App, built the way `instrument.tui` builds it, or None when there is no UI yet."""
    import importlib.util

    if importlib.util.find_spec("instrument.tui") is None:
        return None
    import instrument.tui as tui
    from textual.app import App

    make = getattr(tui, "make_app", None) or getattr(tui, "build_app", None)
    if make is None:
        apps = [v for v in vars(tui).values() if isinstance(v, type) and issubclass(v, App) and v is not App
                and v.__module__ == tui.__name__]
        if not apps:
            return None
        make = apps[0]
    given = {"engine": engine, "preset": preset, "performance": performance}
    params = inspect.signature(make).parameters
    kwargs = {k: v for k, v in given.items() if k in params}
    return make(**kwargs)


async def _play(app, seconds: float, sample) -> None:
    end = time.monotonic() + seconds
    if app is None:
        while time.monotonic() < end:
            await asyncio.sleep(SAMPLE_EVERY)
            sample()
        return
    async with app.run_test(size=(120, 40)) as pilot:
        while time.monotonic() < end:
            await pilot.pause(SAMPLE_EVERY)
            sample()


def run(args) -> int:
    seconds = args.seconds if args.seconds is not None else 20.0 if args.quick else 60.0 * args.minutes
    if seconds <= 0:
        raise UserError("--minutes must be positive.")
    lead = RATE // 2
    with tempfile.TemporaryDirectory() as tmp:
        models = export_configs([args.config], Path(args.models or tmp))
        preset = make_preset(models[args.config])
        if preset.mode == "stream":  # make_preset's measurement-only effect bypasses are not wanted here
            preset.effects = {}
        samples: list[dict] = []
        hog = start_hog(None if args.no_hog else hog_core())
        try:
            with JackSession(args.server, realtime=args.realtime):
                inst = Instrument(preset, midi_path="jack")
                probe = Probe(0.0)  # no capture: only MIDI out and the server's xrun count
                app = host = None
                try:
                    probe.schedule(midi_schedule(seconds, args.cc_rate, lead))
                    probe.start(inst.midi_port)
                    if args.ui == "inprocess":
                        app = find_app(inst.engine, preset, inst.performance)
                    elif args.ui in ("auto", "process"):
                        from instrument.uiproc import UiHost

                        host = UiHost(inst.engine, inst.performance,
                                      headless={"seconds": seconds + 60, "quit": False}).start()
                    t0 = time.monotonic()

                    def sample():
                        s = inst.engine.stats()
                        samples.append({"t": time.monotonic() - t0, "underruns": s.underruns, "xruns": s.xruns,
                                        "server_xruns": probe.xruns, "blocks": s.blocks, "ring_fill": s.ring_fill,
                                        "model_rtf": s.model_rtf, "cpu_share": s.cpu_share,
                                        "midi_events": inst.midi.events,
                                        "nonfinite": s.nonfinite_blocks})

                    sample()
                    asyncio.run(_play(app, seconds, sample))
                    mapper_stats = dict(vars(inst.performance.mapper.stats))
                    ui_alive = host is None or host.wait(0) is None
                finally:
                    if host is not None:
                        host.close()
                    probe.close()
                    inst.close()
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    per_minute = []
    minute, prev = 1, samples[0]
    for s in samples[1:]:
        if s["t"] >= 60.0 * minute or s is samples[-1]:
            per_minute.append({"minute": minute, "seconds": round(s["t"] - prev["t"], 1),
                               "underruns": s["underruns"] - prev["underruns"], "xruns": s["xruns"] - prev["xruns"],
                               "server_xruns": s["server_xruns"] - prev["server_xruns"]})
            minute, prev = minute + 1, s
    last, first = samples[-1], samples[0]
    figures = {
        "seconds": round(last["t"], 1), "config": args.config, "mode": preset.mode, "cc_rate": args.cc_rate,
        "ui": (f"{type(app).__name__} (in the engine's process)" if app is not None else
               "InstrumentApp (own process)" if host is not None else "none"),
        "ui_requests": host.requests if host is not None else None, "ui_alive_to_the_end": ui_alive,
        "cpu_hog": hog is not None,
        "jack_realtime": bool(args.realtime),
        "midi_events": last["midi_events"], "mapper": mapper_stats,
        "underruns": last["underruns"] - first["underruns"], "xruns": last["xruns"] - first["xruns"],
        "server_xruns": last["server_xruns"] - first["server_xruns"],
        "model_rtf": last["model_rtf"], "cpu_share": last["cpu_share"],
        "min_ring_fill": min(s["ring_fill"] for s in samples), "per_minute": per_minute,
        "nonfinite_blocks": last["nonfinite"] - first["nonfinite"],  # NaN repaired before it was heard
        "meets_target": last["underruns"] == first["underruns"] and last["nonfinite"] == first["nonfinite"],
    }
    path = save(args.name, figures, args.out)
    print_table(["minute", "seconds", "underruns", "xruns", "server xruns"],
                [[m["minute"], m["seconds"], m["underruns"], m["xruns"], m["server_xruns"]] for m in per_minute])
    print(f"{figures['seconds']} s of {args.config} ({preset.mode}), UI {figures['ui']}, CPU hog "
          f"{'on' if figures['cpu_hog'] else 'off'}, {figures['midi_events']} MIDI events: "
          f"{figures['underruns']} underruns, {figures['xruns']} xruns, {figures['nonfinite_blocks']} NaN blocks "
          f"({'met' if figures['meets_target'] else 'missed'})")
    print(f"wrote {path}")
    return 0
