"""The live engine: model inference in a producer thread, a lock-free ring, and an audio callback that only copies.

    MIDI/UI ──post(Event)──► notes ──► audio callback: ring → out, voices mixed in, clip ±1, record tap
                         └─► params ─► worker thread: model → resampler → pyo effects → ring
                                            ▲ voice bus (the callback's dry voices, for the effect sends)

- The worker keeps the ring (`ring_blocks` × `block` frames) full; the callback copies one block out of it. An
  empty ring at a callback is an *underrun* (counted, the gap is silence); a PortAudio status flag is an *xrun*.
- Notes act in the callback: their latency is one block, not the ring. Every event is scheduled at its arrival
  time + `schedule_delay` (one block + 2 ms) at sample accuracy, so that latency is constant, not dependent on
  where in a block the event arrived.
- The reported latency is measured: the mean ring fill seen by the callback plus PortAudio's output latency.
See docs/DESIGN.md §4 for the API.
"""
from __future__ import annotations

import gc
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instrument import events as ev
from instrument.devices import resolve_output
from instrument.effects import EffectsChain
from instrument.errors import UserError
from instrument.events import Event, EventQueue
from instrument.params import ParamSpec, Smoother
from instrument.recorder import Recorder
from instrument.ringbuffer import RingBuffer
from instrument.scheduling import MODES as REALTIME_MODES
from instrument.scheduling import ThreadPolicy, current_policy, make_realtime, producer_priority, raise_nice
from instrument.sources import Program
from instrument.voices import VoicePool

NULL_SAMPLERATE = 48000
SCHEDULE_MARGIN = 0.002  # seconds added to one block for the note scheduling delay
# How long a thread may keep the GIL while the audio callback waits for it (seconds). `bench endurance --seconds 60
# --realtime` (UI, CPU hog): 1 ms gave 18 underruns and 3,402 server xruns, 0.2 ms 13 and 2,120.
SWITCH_INTERVAL = 0.0002
CUE_FADE_MS = 2.0  # a cued reset: the pre-roll → ring crossfade, and the old stream's fade-out
WORKER_NICE = -10  # without real-time scheduling, the producer and the audio callback thread ask for a
CALLBACK_NICE = -15  # better-than-default share of the CPU (instrument/scheduling.py)
# The thread that starts the engine (the UI's, on stage) and every thread it starts later share the GIL with the
# audio callback: when one of them is preempted by unrelated work while it holds the GIL, the callback waits
# through that work's whole time slice. A better nice level makes that rare (the same 60 s run, with the UI
# repainting without layout passes: 1 underrun and 1,419 xruns at nice 0, 0 and 300 at nice -10).
DRIVER_NICE = -10


@dataclass
class EngineConfig:
    block: int = 128  # frames per audio callback
    ring_blocks: int = 4  # producer → callback ring depth, in blocks
    output: str = "auto"  # auto | jack | none | device name or index
    samplerate: int | None = None  # None: the device's default rate (48 kHz for the null sink)
    channels: int = 2
    device: str = "auto"  # inference device for onnxruntime (auto | cpu | cuda)
    threads: int = 1  # inference threads (one is steadiest on a shared machine)
    backend: str = "auto"  # executor: auto | onnx | native (the C loop of SampleRNN or VRNN; instrument.model.load_model)
    realtime: str = "auto"  # producer SCHED_FIFO: auto (when the audio thread is real-time) | on | off


_INFINITIES = (math.inf, -math.inf)


@dataclass
class EngineStats:
    blocks: int = 0  # audio callbacks run
    underruns: int = 0  # callbacks that found the ring short of a block (silence was played)
    xruns: int = 0  # callbacks with a PortAudio status flag (output underflow etc.)
    server_underruns: int = 0  # the underruns that followed an xrun within a ring's depth (a starved server)
    latency_ms: float = 0.0  # measured output latency: mean ring fill + device latency
    ring_fill: float = 0.0  # ring fill now, 0..1
    model_rtf: float = 0.0  # seconds of model audio per second of inference (> 1 keeps up)
    cpu_share: float = 0.0  # fraction of wall time the producer spends working
    peak: float = 0.0  # highest absolute sample played so far
    level: float = 0.0  # peak of the last block played (for level meters)
    recording: str | None = None  # the file being recorded, if any
    elapsed: float = 0.0  # seconds since start
    device_latency_ms: float = 0.0
    ring_latency_ms: float = 0.0
    note_latency_ms: float = 0.0  # event arrival → sound (the fixed scheduling delay + device latency)
    samplerate: int = 0
    block: int = 0
    voices: int = 0
    switching: bool = False
    program: str = ""
    mode: str = ""
    dropped_record_frames: int = 0
    cued_resets: int = 0  # stream resets played sample-exactly from a pre-rendered take (instrument/cue.py)
    late_cues: int = 0  # of those, continuations the producer placed late (0 by construction; counted, not assumed)
    # Blocks that carried a NaN and were repaired before they left (a clip ±1 cannot catch NaN): counted where it was
    # caught, the effects chain's output (the chain is then rebuilt, its settings kept) or the callback's mix.
    nonfinite_effects_blocks: int = 0
    nonfinite_output_blocks: int = 0
    audio_sched: str = ""  # how the audio callback thread is scheduled ("FIFO 69", "nice -10"; "" before it ran)
    producer_sched: str = ""  # how the producer thread is scheduled
    realtime_refused: str | None = None  # why the producer did not get SCHED_FIFO when it asked

    @property
    def nonfinite_blocks(self) -> int:
        return self.nonfinite_effects_blocks + self.nonfinite_output_blocks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _NullStream:
    """`--output none`: calls the callback at real-time pace from a thread, like a sound card would."""

    def __init__(self, callback, samplerate: int, block: int, channels: int):
        self.callback, self.samplerate, self.block = callback, samplerate, block
        self._buf = np.zeros((block, channels), np.float32)
        self.latency = 0.0
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="neuralinst-null-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = self.block / self.samplerate
        deadline = time.monotonic()
        late = 0
        while self._running:
            self.callback(self._buf, self.block, None, late)
            deadline += period
            delay = deadline - time.monotonic()
            late = 0
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                # Like a sound card: a late callback is an xrun and the clock goes on; never race to catch up
                # (that would drain the ring faster than real time).
                deadline = time.monotonic()
                late = 1

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(2)

    def close(self) -> None:
        self.stop()


class Engine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        if self.config.block < 16 or self.config.block > 8192:
            raise UserError(f"block size {self.config.block} is out of range (16..8192 frames).")
        if self.config.ring_blocks < 1:
            raise UserError("the ring needs at least one block.")
        self.samplerate = 0
        self._running = False
        self._notes = EventQueue()  # consumed by the audio callback
        self._controls = EventQueue()  # consumed by the worker
        self._program: Program | None = None
        self._fading: tuple[Program, int, int] | None = None  # (old program, frames done, frames total)
        self._pending: tuple[Program, int] | None = None  # a loaded program waiting for the worker
        self._warm: dict[str, Program] = {}  # programs switched away from, kept loaded for fast switching back
        self._switching = False
        self.last_error: str | None = None
        # The audio callback's "now" for scheduling events. instrument/jack_midi.py sets `engine.clock =
        # midi.cycle_time` (the JACK cycle start on the monotonic scale), so JACK MIDI events land sample-exactly.
        self.clock = time.monotonic
        self._recorder: Recorder | None = None
        self._stream = None
        self.host_api = ""  # PortAudio's host API of the output ("JACK Audio Connection Kit", ...), set by start
        self._worker_thread: threading.Thread | None = None
        self._values: dict[str, float] = {}
        self.stats_reset()

    def stats_reset(self) -> None:
        self._blocks = self._underruns = self._xruns = self._server_underruns = 0
        self._nonfinite_fx = self._nonfinite_out = 0
        self._last_xrun_block = -(10 ** 9)
        self._fill_sum = 0
        self._peak = 0.0
        self._work_seconds = 0.0
        self._t_start = time.monotonic()

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self, preset_or_source, seed: int = 0, record: str | None = None) -> "Engine":
        if self._running:
            raise RuntimeError("the engine is already running")
        c = self.config
        if c.realtime not in REALTIME_MODES:  # before anything is opened
            raise UserError(f"--realtime must be one of {', '.join(REALTIME_MODES)}, not {c.realtime!r}.")
        raise_nice(DRIVER_NICE)  # this thread, and the threads it starts from here on (they inherit it)
        # The audio callback needs the GIL within a fraction of a block; Python's default 5 ms switch interval
        # would let the producer hold it through whole JACK cycles (measured: ~40 xruns/s at 128 frames).
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        device = resolve_output(c.output)
        sd = None
        self.host_api = ""
        if device is not None:
            import sounddevice as sd  # late: PortAudio must initialise after the audio server is up

            info = sd.query_devices(device)
            rate = c.samplerate or int(info["default_samplerate"])
            self.host_api = str(sd.query_hostapis(info["hostapi"])["name"])
        else:
            rate = c.samplerate or NULL_SAMPLERATE
        self.samplerate = int(rate)
        B, ch = c.block, c.channels
        self.schedule_delay = B / self.samplerate + SCHEDULE_MARGIN
        self._ring = RingBuffer(c.ring_blocks * B, ch)
        self._send = RingBuffer(2 * (c.ring_blocks + 2) * B, ch)  # the callback's voice bus → effect sends
        self._voices = VoicePool(B, ch, self.samplerate)
        # Callback scratch, allocated once (a device may ask for up to 4 blocks per callback).
        self._voicebus = np.zeros((4 * B, ch), np.float32)
        self._lin = (np.arange(1, 4 * B + 1, dtype=np.float32) / B)[:, None]
        self._ramp = np.zeros((4 * B, 1), np.float32)
        self._audio_policy: ThreadPolicy | None = None  # read once by the callback, on its own thread
        self._producer_policy: ThreadPolicy | None = None
        self._realtime_refused: str | None = None
        # Worker scratch.
        self._sendbuf = np.zeros((B, ch), np.float32)
        self._outbuf = np.zeros((B, ch), np.float32)
        self._volume = Smoother(0.8, B)
        self._voice_gain_now = self._voice_gain_target = 0.8
        # Cued stream resets (instrument/cue.py): the pre-roll the callback is playing, and the request to the
        # producer (ring frame of the note, then a sequence number: plain attribute stores, no allocation).
        self._preroll: np.ndarray | None = None
        self._preroll_pos = 0
        self._cue_take = None
        self._cue_at = 0
        self._cue_seq = self._cue_seen = 0
        self._read_base = 0
        self._duck_pos: int | None = None  # frames since a cued reset's note while the old stream is cut
        program = self._make_program(preset_or_source, seed)
        self._effects = EffectsChain(self.samplerate, B, ch, effect_settings(getattr(program.preset, "effects", None)))
        fade = max(1, int(round(CUE_FADE_MS * self.samplerate / 1000)))
        # Longer than anything the producer can have written past a note's frame when it hears of the note.
        self._cue_shape = ((c.ring_blocks + 2) * B + fade + self._effects.latency_frames, fade)
        k = np.arange(fade)
        self._duck_fade = np.cos(0.5 * np.pi * (k + 0.5) / fade).astype(np.float32)[:, None]
        self._duck_len = self._cue_shape[0] - fade  # where the restarted stream re-enters the ring
        program.enable_cue(*self._cue_shape)
        self._install(program)
        if program.cache is not None:
            program.cache.wait_ready(30)  # the first notes should find every key rendered
        # Everything loaded so far lives for the whole performance: move it out of the collector's sight, so a
        # full garbage collection (which holds the GIL, stalling the producer and the callback) stays short.
        gc.collect()
        gc.freeze()
        self.stats_reset()
        for _ in range(c.ring_blocks):  # prefill: the first callback already has a full ring
            self._produce(None)
        self._running = True
        self._worker_thread = threading.Thread(target=self._worker, name="neuralinst-engine", daemon=True)
        self._worker_thread.start()
        try:
            if sd is None:
                self._stream = _NullStream(self._callback, self.samplerate, B, ch)
            else:
                self._stream = sd.OutputStream(samplerate=self.samplerate, blocksize=B, channels=ch,
                                               dtype="float32", latency="low", device=device,
                                               callback=self._callback)
        except Exception as e:  # PortAudio refuses the device or the rate
            self._running = False
            self._worker_thread.join(2)
            raise UserError(f"cannot open the audio output at {self.samplerate} Hz, block {B}: {e}.") from None
        if record:  # before the stream starts, so the file holds every block that is played
            self.start_recording(record)
        self._t_start = time.monotonic()
        self._stream.start()
        return self

    def runs_on_jack_period(self, period: int) -> bool:
        """Whether the audio callback is a JACK client's, called once per JACK cycle of `period` frames: then a
        JACK MIDI input's cycle clock can be the engine's (`engine.clock = midi.cycle_time`)."""
        return "JACK" in getattr(self, "host_api", "") and period == self.config.block

    def stop(self) -> EngineStats:
        stream, self._stream = self._stream, None  # never stop twice, even if stopping fails
        if stream is not None:
            try:
                stream.stop()
            except Exception:  # PortAudio timed out waiting for a starved audio server: abort instead
                try:
                    stream.abort()
                except Exception:
                    pass
            try:
                stream.close()
            except Exception:
                pass
        self._stream = stream  # stats() reads the device latency from it
        stats = self.stats()
        self._stream = None
        self._running = False
        if self._worker_thread is not None:
            self._worker_thread.join(5)
            self._worker_thread = None
        if self._recorder is not None:
            self.stop_recording()
        stats.recording = None
        for prog in [self._program, *self._warm.values()]:
            if prog is not None:
                prog.close()
        if self._fading is not None:
            self._fading[0].close()
        self._program, self._fading, self._warm = None, None, {}
        if hasattr(self, "_effects"):
            self._effects.close()
        return stats

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._running:
            self.stop()

    # --- programs ----------------------------------------------------------------------------------------
    def _make_program(self, what, seed: int = 0) -> Program:
        if isinstance(what, Program):
            return what
        preset = None
        if isinstance(what, (str, Path)):
            preset = _load_preset(str(what))
        elif hasattr(what, "model_path"):
            preset = what
        if preset is not None:
            from instrument.model import load_model

            model = load_model(str(preset.model_path), device=self.config.device, threads=self.config.threads,
                               backend=self.config.backend)
            return Program(model, self.samplerate, self.config.channels, preset=preset, seed=seed,
                           key=str(getattr(preset, "path", "") or preset.model_path))
        if hasattr(what, "meta") and hasattr(what, "generate"):
            return Program(what, self.samplerate, self.config.channels, seed=seed)
        raise UserError(f"cannot play {what!r}: give a preset name, an .onnx path or a loaded model.")

    def _install(self, program: Program) -> None:
        """Make `program` current: its parameter values reach the engine-level parameters and effects."""
        self._program = program
        for name, value in program.values.items():
            self._apply_engine_param(name, value)
        self._values = dict(program.values)

    def switch(self, preset, crossfade_ms: float = 40.0, seed: int = 0) -> threading.Event:
        """Load `preset` in the background, then crossfade to it (equal power, ≤ 50 ms). Returns an Event set
        when the new program is playing (or the load failed: see `last_error`). The old program stays loaded."""
        done = threading.Event()
        frames = max(1, int(min(float(crossfade_ms), 50.0) / 1000.0 * self.samplerate))
        key = str(getattr(preset, "path", "") or getattr(preset, "model_path", "") or preset)

        def load():
            try:
                prog = self._warm.pop(key, None) or self._make_program(preset, seed)
                prog.enable_cue(*self._cue_shape)
                if prog.cache is not None:
                    prog.cache.wait_ready(10)
                prog.render(self.config.block)  # warm up the graph and the resampler before the crossfade
                gc.freeze()  # the new program lives on: keep full collections short (see start())
                self._pending = (prog, frames)
                while self._pending is not None or self._fading is not None:
                    time.sleep(0.002)
            except UserError as e:
                self.last_error = str(e)
            finally:
                self._switching = False
                done.set()

        self._switching = True
        self.last_error = None
        threading.Thread(target=load, name="neuralinst-switch", daemon=True).start()
        return done

    # --- events, parameters ------------------------------------------------------------------------------
    def post(self, event: Event) -> None:
        """From any thread, never blocks. Notes go to the audio callback, everything else to the producer."""
        (self._notes if event.type in ev.CALLBACK_TYPES else self._controls).post(event)

    def parameters(self) -> list[ParamSpec]:
        return list(self._program.params) if self._program is not None else []

    def get(self, name: str) -> float:
        if name in self._values:
            return self._values[name]
        for p in self.parameters():
            if p.name == name:
                return p.default
        raise KeyError(name)

    def _apply_engine_param(self, name: str, value: float) -> bool:
        if name == "volume":
            v = min(max(value, 0.0), 1.0)
            self._volume.target = v
            self._voice_gain_target = v
            return True
        return self._effects.set(name, value) if hasattr(self, "_effects") else False

    def _apply_control(self, e: Event) -> None:
        prog = self._program
        if e.type == ev.RESET or e.type == ev.NOTE_ON:  # a note-on reaches here only to re-seed a stream
            seed = e.a if e.type == ev.RESET else None
            prog.reset(None if seed is None else int(seed))
        elif e.type == ev.PARAM:
            spec = next((p for p in prog.params if p.name == e.a), None)
            if spec is None:
                return  # a parameter this model does not have (e.g. latent knobs on SampleRNN)
            value = spec.clamp(e.b)
            self._values[e.a] = value
            if not self._apply_engine_param(e.a, value):
                prog.set_param(e.a, value)

    # --- recording ---------------------------------------------------------------------------------------
    def start_recording(self, path) -> Path:
        if self._recorder is not None:
            self.stop_recording()
        self._recorder = Recorder(path, self.samplerate, self.config.channels)
        return self._recorder.path

    def stop_recording(self) -> Path | None:
        rec, self._recorder = self._recorder, None  # the callback stops pushing at its next block
        if rec is None:
            return None
        time.sleep(2 * self.config.block / max(self.samplerate, 1))
        self._dropped_record = rec.dropped_frames
        return rec.close()

    # --- statistics --------------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        sr = max(self.samplerate, 1)
        blocks = self._blocks
        device_ms = 1000.0 * float(getattr(self._stream, "latency", 0.0) or 0.0)
        ring_ms = 1000.0 * (self._fill_sum / blocks) / sr if blocks else 0.0
        fx_ms = 1000.0 * self._effects.latency_frames / sr if hasattr(self, "_effects") else 0.0
        compute, produced = 0.0, 0.0
        for prog in [self._program, *(p for p in [self._fading and self._fading[0]] if p)]:
            if prog is not None:
                c, a = prog.compute_seconds()
                compute, produced = compute + c, produced + a
        elapsed = time.monotonic() - self._t_start
        prog = self._program
        return EngineStats(
            blocks=blocks, underruns=self._underruns, xruns=self._xruns, server_underruns=self._server_underruns,
            latency_ms=round(ring_ms + fx_ms + device_ms, 3),
            ring_fill=round(self._ring.available() / self._ring.capacity, 3) if hasattr(self, "_ring") else 0.0,
            model_rtf=round(produced / compute, 3) if compute > 0 else 0.0,
            cpu_share=round(self._work_seconds / elapsed, 4) if elapsed > 0 else 0.0,
            peak=round(self._peak, 5), level=round(getattr(self, "_level", 0.0), 5), recording=str(self._recorder.path) if self._recorder else None,
            elapsed=round(elapsed, 3), device_latency_ms=round(device_ms, 3), ring_latency_ms=round(ring_ms, 3),
            note_latency_ms=round(1000 * getattr(self, "schedule_delay", 0.0) + device_ms, 3),
            samplerate=self.samplerate, block=self.config.block,
            voices=self._voices.active() if hasattr(self, "_voices") else 0,
            switching=self._switching, program=prog.key if prog else "", mode=prog.mode if prog else "",
            dropped_record_frames=self._recorder.dropped_frames if self._recorder else
            getattr(self, "_dropped_record", 0),
            cued_resets=prog.cue.switches if prog and prog.cue else 0,
            late_cues=prog.cue.late if prog and prog.cue else 0,
            nonfinite_effects_blocks=self._nonfinite_fx, nonfinite_output_blocks=self._nonfinite_out,
            audio_sched=str(self._audio_policy) if getattr(self, "_audio_policy", None) else "",
            producer_sched=str(self._producer_policy) if getattr(self, "_producer_policy", None) else "",
            realtime_refused=getattr(self, "_realtime_refused", None),
        )

    # --- producer (worker thread) ------------------------------------------------------------------------
    def _worker(self) -> None:
        raise_nice(WORKER_NICE)
        self._producer_policy = current_policy()
        B = self.config.block
        poll = max(0.0005, 0.25 * B / self.samplerate)
        scheduled = False
        while self._running:
            if not scheduled and self._audio_policy is not None:
                scheduled = True  # once the callback has said how it runs (instrument/scheduling.py)
                self._schedule_producer(self._audio_policy)
            while True:
                e = self._controls.pop()
                if e is None:
                    break
                self._apply_control(e)
            cue = self._program.cue
            if cue is not None:
                seq = self._cue_seq
                if seq != self._cue_seen:  # the callback began a cued reset: resume it where its pre-roll ends
                    self._cue_seen = seq
                    cue.request(self._cue_at, self._cue_take, self._effects.stream_delay_frames)
                elif cue.due() and self._ring.available() >= 2 * B:
                    cue.arm()  # a knob has rested (or the seed changed): a take of the stream as it is now
            if self._pending is not None and self._fading is None:
                new, frames = self._pending
                old = self._program
                self._install(new)
                self._fading = (old, 0, frames)
                self._pending = None
            if self._ring.free() >= B and self._send.available() >= B:
                self._send.read_into(self._sendbuf)
                self._produce(self._sendbuf)
            else:
                time.sleep(poll)

    def _schedule_producer(self, audio: ThreadPolicy) -> None:
        priority = producer_priority(self.config.realtime, audio)
        if priority is not None:
            self._realtime_refused = make_realtime(priority)
        self._producer_policy = current_policy()

    def _produce(self, voices: np.ndarray | None) -> None:
        t0 = time.perf_counter()
        B = self.config.block
        x = self._program.render(B, at=self._ring.frames_written)
        if self._fading is not None:
            x = self._crossfade(x, B)
        if x is not None:
            g = self._volume.ramp(B)
            x = x * g
        else:
            self._volume.ramp(B)
        self._effects.process(x, voices, self._outbuf)
        if not math.isfinite(self._outbuf.sum()):  # NaN (the chain clips ±inf): never let it reach the ring
            self._repair_effects()
        self._ring.write(self._outbuf)
        self._work_seconds += time.perf_counter() - t0

    def _repair_effects(self) -> None:
        """The chain put out a NaN: silence the block and rebuild the chain with the same settings. A NaN inside
        pyo's filters, delay or reverb would otherwise recirculate there for good (a silent instrument)."""
        self._outbuf.fill(0.0)
        self._nonfinite_fx += 1
        fx = self._effects
        self._effects = EffectsChain(fx.sr, fx.block, fx.channels, fx.settings())

    def _crossfade(self, x_new: np.ndarray | None, B: int) -> np.ndarray:
        old, done, total = self._fading
        x_old = old.render(B)
        t = np.clip((done + np.arange(1, B + 1)) / total, 0.0, 1.0)[:, None]
        a, b = np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)  # equal power: a² + b² = 1
        out = np.zeros((B, self.config.channels), np.float32)
        if x_old is not None:
            out += (x_old * a).astype(np.float32)
        if x_new is not None:
            out += (x_new * b).astype(np.float32)
        done += B
        if done >= total:
            self._fading = None
            self._warm = {old.key: old}  # keep the previous program warm; older ones are released
        else:
            self._fading = (old, done, total)
        return out

    # --- audio callback: copies and mixes only ---------------------------------------------------------
    def _callback(self, outdata, frames, time_info, status) -> None:
        if self._audio_policy is None:  # once, on the audio thread itself (a few system calls)
            policy = current_policy()
            if not policy.realtime and raise_nice(CALLBACK_NICE):
                policy = current_policy()
            self._audio_policy = policy  # published last: the producer follows it
        if status:
            self._xruns += 1
            self._last_xrun_block = self._blocks
        now = self.clock()
        self._read_base = self._ring.frames_read  # the ring frame at this block's first output frame
        fill = self._ring.available()
        got = self._ring.read_into(outdata)
        if got < frames:
            outdata[got:] = 0.0
            self._underruns += 1
            if self._blocks - self._last_xrun_block <= self.config.ring_blocks + 2:
                # Right after the server missed cycles: it may now be running cycles back to back to catch
                # up, draining the ring faster than real time (a starved server, not a slow producer).
                self._server_underruns += 1
        self._fill_sum += fill
        q, sr = self._notes, self.samplerate
        while True:
            e = q.pop()
            if e is None:
                break
            offset = int((e.time + self.schedule_delay - now) * sr)
            if offset >= frames:
                if offset < 10 * sr:  # due in a later block; further than 10 s means another clock: play now
                    q.push_front(e)
                    break
                offset = 0
            self._note(e, max(offset, 0))
        dp = self._duck_pos
        if dp is not None:  # a cued reset: what the ring still holds of the old stream is cut at the note
            self._duck(outdata, frames, dp)
        vb = self._voicebus[:frames]
        vb.fill(0.0)
        self._voices.mix_into(vb, frames)
        p = self._preroll
        if p is not None:  # a cued stream reset's first frames, on the voice bus (so the effect sends get it)
            pos = self._preroll_pos
            s0 = -pos if pos < 0 else 0
            k0 = pos + s0
            n = min(frames - s0, len(p) - k0)
            if n > 0:
                seg = vb[s0:s0 + n]
                np.add(seg, p[k0:k0 + n], out=seg)
            pos += frames
            if pos >= len(p):
                self._preroll = None
            else:
                self._preroll_pos = pos
        g0, g1 = self._voice_gain_now, self._voice_gain_target
        if g0 != g1:  # volume moved: a linear ramp over this block, no zipper
            r = self._ramp[:frames]
            np.multiply(self._lin[:frames], g1 - g0, out=r)
            np.add(r, g0, out=r)
            np.multiply(vb, r, out=vb)
            self._voice_gain_now = g1
        elif g1 != 1.0:
            np.multiply(vb, g1, out=vb)
        vs = float(vb.sum())
        if vs != vs or vs in _INFINITIES:  # a NaN/inf voice: repaired here, before it reaches the effects' send
            np.nan_to_num(vb, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
            self._nonfinite_out += 1
        self._send.write(vb[:got])  # as many frames as the ring gave: keeps ring + send depth constant
        np.add(outdata, vb, out=outdata)
        np.clip(outdata, -1.0, 1.0, out=outdata)  # the last guarantee: nothing beyond ±1 leaves the engine
        peak = max(float(outdata.max()), -float(outdata.min()))
        if peak != peak:  # a NaN got through (np.clip keeps NaN): the rare path may allocate
            np.nan_to_num(outdata, copy=False, nan=0.0)
            self._nonfinite_out += 1
            peak = max(float(outdata.max()), -float(outdata.min()))
        self._level = peak  # the last block's peak, for level meters
        if peak > self._peak:
            self._peak = peak
        rec = self._recorder
        if rec is not None:
            rec.push(outdata)
        self._blocks += 1

    def _duck(self, outdata, frames: int, dp: int) -> None:
        fade, F, end = self._duck_fade, len(self._duck_fade), self._duck_len
        j = -dp if dp < 0 else 0  # output frame of this block where the cut begins
        i = dp + j  # frames since the note's frame
        if j < frames and i < F:
            n = min(frames - j, F - i)
            seg = outdata[j:j + n]
            np.multiply(seg, fade[i:i + n], out=seg)
            j, i = j + n, i + n
        if j < frames and i < end:
            outdata[j:j + min(frames - j, end - i)] = 0.0
        dp += frames
        self._duck_pos = None if dp >= end else dp

    def _note(self, e: Event, offset: int) -> None:
        if e.type == ev.PITCH_BEND:  # bends every sounding clip voice (stream modes have no pitch to bend)
            semitones = e.b * (ev.DEFAULT_BEND_RANGE if e.a is None else e.a)
            self._voices.set_rate(2.0 ** (semitones / 12.0))
            return
        note = int(e.a)
        if e.type == ev.NOTE_OFF or (e.type == ev.NOTE_ON and e.b <= 0.0):
            self._voices.note_off(note)
            return
        prog = self._program
        cache = prog.cache
        if cache is not None:
            clip = cache.clip_for(min(max(note, 0), 127))  # the key's own pitch; the pool applies the bend
            if clip is not None:
                self._voices.note_on(note, e.b * e.b, clip, offset)
        elif prog.reset_on_note:
            cue = prog.cue
            take = cue.take if cue is not None and not self._effects.filter_engaged else None
            if take is None:
                self._controls.post(e)  # the worker re-seeds the stream, behind the ring
                return
            self._preroll, self._preroll_pos = take.preroll, -offset
            wet = self._effects.wet_silent_after
            if wet is not None and self.clock() >= wet:
                # The ring holds the stream alone (no delay or reverb tail to keep): cut the old stream at the
                # note, as a restart should sound, instead of letting its queued frames play under the new one.
                self._duck_pos = -offset
            self._cue_take, self._cue_at = take, self._read_base + offset
            self._cue_seq += 1  # published last: the producer reads the take and frame after seeing it


def effect_settings(effects: dict | None) -> dict[str, float]:
    """A preset's `effects` table ({"reverb": {"send": 0.3, "size": 0.9, "bypass": false}, ...}) as flat
    effect settings ({"reverb.send": 0.3, "reverb.size": 0.9, "fx.reverb.bypass": 0.0})."""
    flat: dict[str, float] = {}
    for fx, settings in (effects or {}).items():
        if not isinstance(settings, dict):
            continue
        for key, value in settings.items():
            if key == "bypass":
                flat[f"fx.{fx}.bypass"] = 1.0 if value else 0.0
            elif isinstance(value, (int, float)):
                flat[f"{fx}.{key}"] = float(value)
    return flat


def _load_preset(name: str):
    try:
        from instrument.presets import load_preset
    except ModuleNotFoundError as e:
        if e.name != "instrument.presets" or not name.endswith(".onnx"):
            raise
        return _OnnxOnly(name)  # presets are not built yet: an .onnx path still plays with defaults
    return load_preset(name)


@dataclass
class _OnnxOnly:
    model_path: str
    name: str = ""
    mode: str | None = None
    root_note: int = 60
    defaults: dict | None = None
    latents: dict | None = None
    effects: dict | None = None
    path: str = ""

    def __post_init__(self):
        self.name = self.name or Path(self.model_path).stem
        self.path = self.model_path
