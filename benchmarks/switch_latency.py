"""Model switch: a MIDI Program Change → the new model audible, through a real JACK server.

    neuralinst bench switch [--switches 20] [--quiet vrnn-tiny] [--loud wavegan-tiny] [--quick] [--server NAME]

Two user presets of very different level are written to a private preset folder: `bench-quiet` (the `--quiet`
model at volume 0.1) and `bench-loud` (the `--loud` model, a different kind by default, at volume 1.0): 20 dB
apart. The measuring JACK client (`note_latency.Probe`) sends Program Change 0 / 1 alternately on its MIDI port
into the instrument's JACK MIDI input; the instrument's own path does the rest (mapper → PresetSwitcher → load →
`Engine.switch`, 40 ms equal-power crossfade) while the probe records the output in the same callback.

The switch latency is the captured frame at which the output level crosses to the new preset's side (the
geometric mean of the two steady levels, in 128-frame RMS windows, and stays there for 10 ms) minus the frame
the Program Change was sent at. With a 40 ms equal-power crossfade the level crosses the midpoint about 10 ms
into the fade, so the figure is load + hand-over + ~10 ms. The first switch to each preset loads its model
(cold); after that the engine keeps the previous program warm, and the table shows both. Underruns and xruns are
counted over the whole run: the target is none while switching.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import print_table, stats_ms
from benchmarks.note_latency import RATE, Instrument, JackSession, Probe, export_configs, save
from instrument.errors import UserError

TARGET_MS = 50.0
WINDOW = 128
HOLD = 4  # windows (≈ 10 ms) the level must stay on the new side
QUIET, LOUD = "bench-quiet", "bench-loud"
VOLUMES = {QUIET: 0.1, LOUD: 1.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--switches", type=int, default=24, help="program changes (default 24)")
    p.add_argument("--interval-ms", type=float, default=600.0, help="time between switches (default 600 ms)")
    p.add_argument("--quiet", default="vrnn-tiny", help="config of the quiet preset (default vrnn-tiny)")
    p.add_argument("--loud", default="wavegan-tiny", help="config of the loud preset (default wavegan-tiny, "
                   "played in continuous mode)")
    p.add_argument("--quick", action="store_true", help="a short run (6 switches)")
    p.add_argument("--server", default=None, help="use this running JACK server instead of a private one")
    p.add_argument("--models", default=None, help="folder for the exported models (default: a temporary one)")
    p.add_argument("--out", default=None, help="folder for the JSON result (default benchmarks/results/)")
    p.add_argument("--name", default="switch_latency", help="result file name (default switch_latency)")


def write_presets(models: dict[str, Path], quiet: str, loud: str) -> dict[str, object]:
    """The two presets, saved as user presets (NEURALINST's config dir must already point at a private folder)."""
    from instrument.presets import load_preset, save_preset

    out = {}
    for name, config in ((QUIET, quiet), (LOUD, loud)):
        preset = load_preset(str(models[config]))
        if preset.kind == "wavegan":
            preset.mode = "continuous"  # a steady stream: one-shots would be silence between notes
        preset.name = name
        preset.defaults = dict(preset.defaults or {}, volume=VOLUMES[name])
        save_preset(preset, name)
        out[name] = load_preset(name)
    return out


def levels_db(x: np.ndarray) -> np.ndarray:
    n = len(x) // WINDOW
    w = x[: n * WINDOW].astype(np.float64).reshape(n, WINDOW, -1)
    return 10 * np.log10((w * w).mean(axis=(1, 2)) + 1e-20)


def switch_onsets(db: np.ndarray, sent: list[tuple[int, int]], threshold: float, window: int
                  ) -> list[int | None]:
    """For each (frame, program) switch, the first frame at which the level is on the target side for HOLD
    windows in a row (program 0 = loud: above the threshold)."""
    out = []
    for frame, program in sent:
        first = frame // WINDOW + 1  # the first window wholly after the switch was sent
        side = db[first:first + window // WINDOW] > threshold
        if program == 1:
            side = ~side
        run, found = 0, None
        for i, on in enumerate(side):
            run = run + 1 if on else 0
            if run == HOLD:
                found = (first + i - HOLD + 1) * WINDOW - frame
                break
        out.append(found)
    return out


def run(args) -> int:
    if args.quick:
        args.switches = min(args.switches, 6)
    if args.switches < 2:
        raise UserError("--switches must be at least 2.")
    interval = int(args.interval_ms / 1000 * RATE)
    with tempfile.TemporaryDirectory() as tmp:
        saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "NEURALINST_SHIPPED_PRESETS")}
        os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")  # only the two bench presets are listed
        os.environ["NEURALINST_SHIPPED_PRESETS"] = str(Path(tmp) / "shipped")
        try:
            models = export_configs([args.quiet, args.loud], Path(args.models or tmp))
            presets = write_presets(models, args.quiet, args.loud)
            from instrument.presets import preset_names

            order = preset_names()
            if order != sorted([QUIET, LOUD]):
                raise UserError(f"unexpected preset list {order}")
            program = {name: i for i, name in enumerate(order)}  # bench-loud = 0, bench-quiet = 1
            lead = RATE  # one second of the quiet preset first
            schedule = []
            for i in range(args.switches):
                target = LOUD if i % 2 == 0 else QUIET
                schedule.append((lead + i * interval, bytes([0xC0, program[target]])))
            total = lead + args.switches * interval + RATE // 4
            with JackSession(args.server):
                inst = Instrument(presets[QUIET], midi_path="jack")
                probe = Probe(total / RATE + 1.0)
                try:
                    probe.schedule(schedule)
                    probe.start(inst.midi_port)
                    before = inst.engine.stats()
                    ok = probe.wait(total, timeout=total / RATE * 3 + 20)
                    after = inst.engine.stats()
                    switcher = inst.performance.switcher
                    switches_done, switch_error = switcher.switches, switcher.error
                finally:
                    probe.close()
                    inst.close()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    if not ok:
        raise UserError(f"the capture stalled at frame {probe.frames} of {total}.")
    x = probe.audio()
    db = levels_db(x)
    sent = [(f, d[1]) for f, d in probe.sent if d[0] & 0xF0 == 0xC0]
    # The steady levels: the middle of each interval, where no switch is under way.
    def steady(prog):
        vals = [db[(f + interval // 2) // WINDOW:(f + interval - RATE // 20) // WINDOW] for f, p in sent if p == prog]
        return float(np.median(np.concatenate(vals))) if vals else float("nan")

    loud_db, quiet_db = steady(program[LOUD]), steady(program[QUIET])
    threshold = 0.5 * (loud_db + quiet_db)
    lags = switch_onsets(db, [(f, 0 if p == program[LOUD] else 1) for f, p in sent], threshold, interval)
    found = [(i, lag) for i, lag in enumerate(lags) if lag is not None]
    cold = [lag for i, lag in found if i < 2]
    warm = [lag for i, lag in found if i >= 2]
    s_all = stats_ms(np.asarray([lag for _, lag in found], np.float64) / RATE)
    figures = {
        "samplerate": RATE, "interval_ms": args.interval_ms, "crossfade_ms": 40.0,
        "quiet": {"config": args.quiet, "volume": VOLUMES[QUIET], "level_db": quiet_db},
        "loud": {"config": args.loud, "volume": VOLUMES[LOUD], "level_db": loud_db},
        "switches": len(sent), "switched": switches_done, "detected": len(found), "switch_error": switch_error,
        "latency_ms": s_all, "cold_ms": [1e3 * v / RATE for v in cold], "warm_ms": stats_ms(np.asarray(warm) / RATE),
        "underruns": after.underruns - before.underruns, "xruns": after.xruns - before.xruns,
        "probe_xruns": probe.xruns, "target_ms": TARGET_MS,
        "meets_target": bool(found) and len(found) == len(sent) and s_all["max"] <= TARGET_MS
        and after.underruns == before.underruns,
    }
    path = save(args.name, figures, args.out)
    w = figures["warm_ms"]
    print_table(["switches", "found", "cold ms", "warm p50", "warm p99", "max ms", "underruns", "xruns", "level dB",
                 "target"],
                [[len(sent), len(found), ", ".join(f"{v:.1f}" for v in figures["cold_ms"]) or "-",
                  w.get("p50", "-"), w.get("p99", "-"), s_all.get("max", "-"), figures["underruns"],
                  figures["xruns"], f"{quiet_db:.0f}/{loud_db:.0f}", "met" if figures["meets_target"] else "missed"]])
    print(f"wrote {path}")
    return 0
