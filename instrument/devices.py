"""Audio outputs and MIDI inputs: listing them (`neuralinst devices`) and choosing the engine's output.

Audio goes through PortAudio (sounddevice), MIDI through rtmidi's JACK API. Without an audio device the user gets
one sentence that says how to get one, never a traceback.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

from instrument.errors import UserError

NO_DEVICE = ("no audio output device was found: start a JACK server (for example `jackd -d dummy -r 48000 -p 128 &`, "
             "or `jackd -d alsa` with a sound card), or play silently and record with `--output none --record "
             "take.wav`.")


@contextlib.contextmanager
def quiet_stderr():
    """Silence the C libraries' own stderr chatter (libjack prints five lines when no server runs) while
    PortAudio or rtmidi probe the audio server; the user gets our one sentence instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _sounddevice():
    try:
        with quiet_stderr():
            import sounddevice as sd
    except OSError as e:  # libportaudio missing
        raise UserError(f"PortAudio is not available ({e}); install libportaudio2.") from None
    return sd


def list_outputs() -> list[dict]:
    sd = _sounddevice()
    apis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        if d["max_output_channels"] > 0:
            out.append({"index": i, "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                        "channels": d["max_output_channels"], "samplerate": d["default_samplerate"],
                        "latency_ms": round(1000 * d["default_low_output_latency"], 2)})
    return out


def list_midi_inputs() -> list[str]:
    try:
        import rtmidi

        with quiet_stderr():
            midi_in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="neuralinst-devices")
    except Exception:  # no JACK server: rtmidi cannot open a client; there are no inputs to list
        return []
    try:
        return list(midi_in.get_ports())
    finally:
        midi_in.delete()


def resolve_output(output: str = "auto") -> int | None:
    """The PortAudio device index for `--output` (auto | jack | none | NAME | INDEX); None means the null sink."""
    if output == "none":
        return None
    outputs = list_outputs()
    if not outputs:
        raise UserError(NO_DEVICE)
    if output == "auto":
        sd = _sounddevice()
        default = sd.default.device[1] if sd.default.device else -1
        for d in outputs:
            if d["index"] == default:
                return d["index"]
        jack = [d for d in outputs if "JACK" in d["hostapi"]]
        return (jack or outputs)[0]["index"]
    if output == "jack":
        jack = [d for d in outputs if "JACK" in d["hostapi"]]
        if not jack:
            raise UserError("no JACK output was found: start a JACK server first (for example "
                            "`jackd -d dummy -r 48000 -p 128 &`).")
        return jack[0]["index"]
    if output.isdigit():
        for d in outputs:
            if d["index"] == int(output):
                return d["index"]
    matches = [d for d in outputs if output.lower() in d["name"].lower()]
    if not matches:
        names = ", ".join(repr(d["name"]) for d in outputs)
        raise UserError(f"no audio output matches {output!r}; the outputs are {names}.")
    return matches[0]["index"]


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the lists as JSON")


def run(args) -> int:
    outputs = list_outputs()
    midi = list_midi_inputs()
    if args.json:
        print(json.dumps({"audio_outputs": outputs, "midi_inputs": midi}))
        return 0 if outputs else 1
    if not outputs:
        raise UserError(NO_DEVICE)
    print("Audio outputs:")
    for d in outputs:
        print(f"  [{d['index']}] {d['name']} ({d['hostapi']}, {d['channels']} ch, {d['samplerate']:.0f} Hz, "
              f"{d['latency_ms']} ms)")
    print("MIDI inputs:" if midi else "MIDI inputs: none (connect a controller to the JACK MIDI graph)")
    for name in midi:
        print(f"  {name}")
    return 0
