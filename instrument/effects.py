"""The effects after the model: a pyo chain in manual mode, driven block by block from the producer thread.

    stream ──► low-pass ──┬──────────────────────────────► + ──► limiter ──► hard clip ±1
    voices ──► low-pass ──┴─► + ─┬─► delay  × delay.send ─┘
                                 └─► reverb × reverb.send ┘

Two stereo inputs: the model stream (played through the chain) and the one-shot voice bus (the voices sound
dry from the audio callback with one block of latency; here they only feed the delay and reverb sends, whose
wet return arrives with the ring's latency — a few ms of pre-delay). pyo runs with `audio="manual"`: the engine
writes a block into the server's input buffer, calls `process()`, and copies the output buffer out (a view into
pyo's memory: always copied). Every parameter goes through `SigTo`, so knob moves never zipper, and each
effect's bypass crossfades. pyo allows one server per process, so the chain keeps a module-level server.
"""
from __future__ import annotations

import ctypes
import os
import time

import numpy as np

os.environ.setdefault("PYO_GUI_WX", "0")

SMOOTH_SECONDS = 0.02
OPEN_CUTOFF = 19000.0  # Hz
LIMITER_LOOKAHEAD = 0.0005  # seconds: the only latency the chain adds
_server = None  # (pyo.Server, sr, block, channels)
_active_chain = None  # the EffectsChain currently in the server's graph


def _pyo():
    import pyo  # imported lazily: it prints a banner and loads its own libraries

    return pyo


def _get_server(sr: int, block: int, channels: int):
    global _server
    pyo = _pyo()
    if _server is not None:
        s, ssr, sblock, sch = _server
        if (ssr, sblock, sch) == (sr, block, channels):
            return s
        s.stop()
        s.shutdown()
        _server = None
    s = pyo.Server(sr=sr, nchnls=channels, ichnls=2 * channels, buffersize=block, duplex=1, audio="manual",
                   midi="none", verbosity=1)
    s.boot()
    s.start()
    _server = (s, sr, block, channels)
    return s


class EffectsChain:
    def __init__(self, samplerate: int, block: int, channels: int = 2, settings: dict | None = None):
        global _active_chain
        pyo = _pyo()
        if _active_chain is not None:  # one chain per process: the server's buffers are shared
            _active_chain.close()
        _active_chain = self
        self.sr, self.block, self.channels = int(samplerate), int(block), int(channels)
        self.latency_frames = int(round(LIMITER_LOOKAHEAD * self.sr))
        self.filter_engaged = False  # the stream passes the low-pass (voices played dry do not)
        self.stream_delay_frames = self.latency_frames  # the stream's delay through the chain (limiter lookahead)
        # time.monotonic() from which the delay and reverb returns are exactly silent (their output gains have
        # reached 0), so the chain's output is the stream alone; None while either is open.
        self.wet_silent_after: float | None = time.monotonic()
        self.server = _get_server(self.sr, self.block, channels)
        n_in, n_out = 2 * channels * block, channels * block
        self._in = np.ctypeslib.as_array((ctypes.c_float * n_in).from_address(int(self.server.getInputAddr(), 16)))
        self._out = np.ctypeslib.as_array((ctypes.c_float * n_out).from_address(int(self.server.getOutputAddr(), 16)))
        self._in2 = self._in.reshape(block, 2 * channels)  # interleaved: stream channels, then voice channels
        self._out2 = self._out.reshape(block, channels)
        ch = list(range(channels))
        t = SMOOTH_SECONDS
        # Keep a Python reference to every pyo object: pyo drops unreferenced objects from the graph.
        self.values = {"filter.cutoff": 20000.0, "delay.send": 0.0, "reverb.send": 0.0, "delay.time": 0.3,
                       "delay.feedback": 0.35, "reverb.size": 0.8, "reverb.damp": 0.5, "limiter.threshold": -1.0}
        self.bypass = {"filter": 0.0, "delay": 0.0, "reverb": 0.0, "limiter": 0.0}
        self.sig = {
            "cutoff": pyo.SigTo(20000.0, time=t), "delay": pyo.SigTo(0.0, time=t), "reverb": pyo.SigTo(0.0, time=t),
            "fb": pyo.SigTo(0.35, time=t), "dtime": pyo.SigTo(0.3, time=0.2),
            "filter_on": pyo.SigTo(0.0, time=t), "limiter_on": pyo.SigTo(1.0, time=t),
        }
        self.stream_in = pyo.Input(ch)
        self.voice_in = pyo.Input([channels + c for c in ch])
        # Two Butterworth sections: a 24 dB/oct low-pass that is musical at any cutoff.
        self.lp1 = pyo.Biquad(self.stream_in, freq=self.sig["cutoff"], q=0.707, type=0)
        self.lp2 = pyo.Biquad(self.lp1, freq=self.sig["cutoff"], q=0.707, type=0)
        self.stream_f = pyo.Interp(self.stream_in, self.lp2, interp=self.sig["filter_on"])
        self.vlp1 = pyo.Biquad(self.voice_in, freq=self.sig["cutoff"], q=0.707, type=0)
        self.vlp2 = pyo.Biquad(self.vlp1, freq=self.sig["cutoff"], q=0.707, type=0)
        self.voice_f = pyo.Interp(self.voice_in, self.vlp2, interp=self.sig["filter_on"])
        self.send_bus = pyo.Mix([self.stream_f, self.voice_f], voices=channels)
        self.delay = pyo.Delay(self.send_bus, delay=self.sig["dtime"], feedback=self.sig["fb"], maxdelay=2.0,
                               mul=self.sig["delay"])
        self.reverb = pyo.Freeverb(self.send_bus, size=0.8, damp=0.5, bal=1.0, mul=self.sig["reverb"])
        self.mix = pyo.Mix([self.stream_f, self.delay, self.reverb], voices=channels)
        # Limiter: a fast compressor with a high ratio and 0.5 ms lookahead (it catches a peak before it passes;
        # pyo 1.1.0's Compress garbles the signal with lookahead=0, measured). The hard clip after it is the last
        # guarantee.
        self.comp = pyo.Compress(self.mix, thresh=-1.0, ratio=20, risetime=0.001, falltime=0.08,
                                 lookahead=1000.0 * LIMITER_LOOKAHEAD, knee=0.0)
        self.limited = pyo.Interp(self.mix, self.comp, interp=self.sig["limiter_on"])
        self.clipped = pyo.Clip(self.limited, min=-1.0, max=1.0)
        self.output = self.clipped.out()
        for name, value in (settings or {}).items():
            self.set(name, value)
        for _ in range(8):  # settle pyo's start-up amplitude ramp before the first real block
            self._in[:] = 0.0
            self.server.process()

    def set(self, name: str, value: float) -> bool:
        """Apply `filter.cutoff`, `delay.send`, `reverb.send`, `fx.<name>.bypass` (and the detail settings
        `delay.time`, `delay.feedback`, `reverb.size`, `reverb.damp`); False for a name it does not own."""
        v = float(value)
        if name.startswith("fx.") and name.endswith(".bypass"):
            fx = name[3:-7]
            if fx not in self.bypass:
                return False
            self.bypass[fx] = 1.0 if v >= 0.5 else 0.0
            on = 1.0 - self.bypass[fx]
            if fx == "filter":
                self._update_filter()
            elif fx == "limiter":
                self.sig["limiter_on"].value = on
                self.stream_delay_frames = self.latency_frames if on else 0  # measured: 24 frames on, 0 off
            else:
                self.sig[fx].value = self.values[f"{fx}.send"] * on
                self._update_wet()
            return True
        if name not in self.values:
            return False
        self.values[name] = v
        if name == "filter.cutoff":
            self.sig["cutoff"].value = min(max(v, 20.0), 0.45 * self.sr)
            self._update_filter()
        elif name == "delay.send":
            self.sig["delay"].value = min(max(v, 0.0), 1.0) * (1.0 - self.bypass["delay"])
            self._update_wet()
        elif name == "reverb.send":
            self.sig["reverb"].value = min(max(v, 0.0), 1.0) * (1.0 - self.bypass["reverb"])
            self._update_wet()
        elif name == "delay.time":
            self.sig["dtime"].value = min(max(v, 0.001), 2.0)
        elif name == "delay.feedback":
            self.sig["fb"].value = min(max(v, 0.0), 0.95)
        elif name == "reverb.size":
            self.reverb.size = min(max(v, 0.0), 1.0)
        elif name == "reverb.damp":
            self.reverb.damp = min(max(v, 0.0), 1.0)
        return True

    def settings(self) -> dict[str, float]:
        """Every setting by the names `set` takes: a new chain built from them sounds as this one is set."""
        return {**self.values, **{f"fx.{fx}.bypass": on for fx, on in self.bypass.items()}}

    def _update_wet(self) -> None:
        if self.sig["delay"].value > 0.0 or self.sig["reverb"].value > 0.0:
            self.wet_silent_after = None
        elif self.wet_silent_after is None:  # SigTo glides to 0 over SMOOTH_SECONDS; then mul = 0 exactly
            self.wet_silent_after = time.monotonic() + 2 * SMOOTH_SECONDS

    def _update_filter(self) -> None:
        # Fully open (≥ OPEN_CUTOFF) the filter crossfades out of the path: an open filter is exactly transparent.
        engaged = self.bypass["filter"] < 0.5 and self.values["filter.cutoff"] < OPEN_CUTOFF
        self.sig["filter_on"].value = 1.0 if engaged else 0.0
        self.filter_engaged = engaged

    def process(self, stream: np.ndarray | None, voices: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """One block: stream and voices [block, channels] (None = silence) → out [block, channels]."""
        c = self.channels
        if stream is None:
            self._in2[:, :c] = 0.0
        else:
            self._in2[:, :c] = stream
        if voices is None:
            self._in2[:, c:] = 0.0
        else:
            self._in2[:, c:] = voices
        self.server.process()
        np.copyto(out, self._out2)  # pyo's buffer is reused by the next process(): copy it out now
        np.clip(out, -1.0, 1.0, out=out)
        return out

    def close(self) -> None:
        """Take this chain out of the (shared) pyo server: a chain left running would add to the next one's
        output, since every chain reads the same input buffer."""
        global _active_chain
        for obj in self._objects():
            obj.stop()
        if _active_chain is self:
            _active_chain = None

    def _objects(self):
        return [self.output, self.clipped, self.limited, self.comp, self.mix, self.reverb, self.delay,
                self.send_bus, self.voice_f, self.vlp2, self.vlp1, self.stream_f, self.lp2, self.lp1,
                self.voice_in, self.stream_in, *self.sig.values()]
