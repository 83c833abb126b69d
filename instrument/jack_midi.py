"""MIDI in as a JACK client: events timed to the sample, and the clock the engine schedules them by.

python-rtmidi's JACK backend hands Python only a delta time, stamped when its thread gets round to the message,
so a note's time jitters by up to a JACK period (measured here: jitter 2.6 ms at 128 frames). A JACK MIDI port
read in our own process callback gives each event its frame offset inside the cycle, so its time is
`cycle start frame + offset`: exact.

Both the events and the engine's audio callback must then use the same clock. `FrameClock` maps JACK frames to
seconds on the `time.monotonic()` scale (so events from the UI or rtmidi, stamped with `time.monotonic()`, still
schedule correctly), and `cycle_time()` is the start of the current JACK cycle on that scale. With
`engine.clock = midi.cycle_time` the engine's offset for an event is `(event + delay - cycle start) × rate`, a
whole number of frames that does not depend on when either callback happened to run.

    midi = JackMidiInput(mapper.handle).start()      # handler(MidiMessage), called on JACK's process thread
    engine.clock = midi.cycle_time                   # sample-accurate scheduling of midi's events
    midi.connect("a2j:.*|system:midi_capture.*")     # or let other clients connect to midi.port_name

The handler runs inside the JACK process cycle: it must only do what `Mapper.handle` does (a few dict operations
and a lock-free post), never block.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable

from instrument.errors import UserError
from instrument.midi import MidiMessage, MidiParser

FRAME_WRAP = 1 << 32  # jack_nframes_t is 32 bits: about 24.8 hours at 48 kHz
SLEW_PER_SECOND = 20e-6  # at most this much clock correction per second (under one sample at 48 kHz)


class FrameClock:
    """JACK frame time → seconds on the `time.monotonic()` scale, anchored once and slewed gently.

    The anchor is the smallest (monotonic − frame seconds) seen: a process callback never runs *before* its
    cycle starts, so the minimum over many cycles is the true offset plus the scheduler's best wake-up. The
    drift between the audio clock and the monotonic clock is corrected by at most `SLEW_PER_SECOND`, so two
    times taken a block apart never differ from their frame distance by more than a fraction of a sample."""

    def __init__(self, samplerate: int):
        self.rate = float(samplerate)
        self._frame0: int | None = None
        self._epoch = 0.0
        self._window_min = float("inf")
        self._window_end = 0.0
        self._frames = 0  # unwrapped frames since frame0 at the last observation
        self._last_raw = 0

    def _unwrap(self, frame: int) -> int:
        # Frames since the anchor, across 32-bit wrap-around (the last observation is at most seconds old).
        delta = (frame - self._last_raw) % FRAME_WRAP
        if delta > FRAME_WRAP // 2:  # an event slightly before the last observation
            delta -= FRAME_WRAP
        return self._frames + delta

    def observe(self, cycle_frame: int, now: float) -> None:
        """Called at the start of each process cycle with `last_frame_time` and `time.monotonic()`."""
        if self._frame0 is None:
            self._frame0, self._last_raw, self._frames = cycle_frame, cycle_frame, 0
            self._epoch, self._window_end = now, now + 1.0
            return
        self._frames = self._unwrap(cycle_frame)
        self._last_raw = cycle_frame
        error = now - (self._epoch + self._frames / self.rate)
        if error < self._window_min:
            self._window_min = error
        if now >= self._window_end:
            step = min(max(self._window_min, -SLEW_PER_SECOND), SLEW_PER_SECOND)
            self._epoch += step
            self._window_min, self._window_end = float("inf"), now + 1.0

    def seconds(self, frame: int) -> float:
        if self._frame0 is None:
            return time.monotonic()
        return self._epoch + self._unwrap(frame) / self.rate


class CycleCounter:
    """Which cycle a callback is really processing, when JACK's global frame timer may already have moved on.

    JACK2 runs clients asynchronously: a callback that runs late reads the *next* cycle's `last_frame_time`, and
    an event stamped (or a block scheduled) from it lands a period off. Each callback is one cycle, so counting
    them (+frames each) gives the true cycle; the server's value only re-anchors the count when it differs
    persistently (a cycle the server really skipped: the difference stays for `HOLD` callbacks) or when the
    count ran ahead (the server is never behind the cycle being processed)."""

    HOLD = 16

    def __init__(self):
        self.frame: int | None = None
        self._ahead = 0  # consecutive callbacks with the server's frame ahead of the count
        self._least = 0  # the smallest such difference during that run

    def next(self, server_frame: int, frames: int) -> int:
        if self.frame is None:
            self.frame = server_frame
            return server_frame
        self.frame = (self.frame + frames) % FRAME_WRAP
        d = (server_frame - self.frame) % FRAME_WRAP
        if d > FRAME_WRAP // 2:
            d -= FRAME_WRAP
        if d < 0:  # counted ahead of the server: impossible for a cycle in progress, so trust the server
            self.frame, self._ahead = server_frame, 0
        elif d > 0:
            self._least = d if self._ahead == 0 else min(self._least, d)
            self._ahead += 1
            if self._ahead >= self.HOLD:  # persistently ahead: the server skipped cycles; follow it
                self.frame = (self.frame + self._least) % FRAME_WRAP
                self._ahead = 0
        else:
            self._ahead = 0
        return self.frame


class JackMidiInput:
    """The instrument's JACK MIDI input port `<name>:midi_in`. `handler(msg)` gets every channel message."""

    def __init__(self, handler: Callable[[MidiMessage], None], name: str = "neuralinst-midi"):
        self.handler = handler
        self.name = name
        self.parser = MidiParser()
        self.errors = 0  # exceptions raised by the handler (counted; MIDI keeps flowing)
        self.events = 0  # raw JACK MIDI events read
        self.client = None
        self.port = None
        self.clock: FrameClock | None = None
        # The engine callback's cycles (via cycle_time). Our own MIDI callback reads the server's frame directly:
        # there a late callback and a skipped one look alike, and counting made notes early (measured: 8 % of
        # notes clamped to offset 0 under load 8) where reading directly makes ~2 % one period late.
        self._audio_cycle = CycleCounter()
        self._period = 0

    def start(self) -> "JackMidiInput":
        try:
            import jack
        except ImportError:  # pragma: no cover - JACK-Client is a dependency; say so if it is missing
            raise UserError("JACK MIDI needs the JACK-Client package (pip install JACK-Client).") from None
        try:
            self.client = jack.Client(self.name, no_start_server=True)
        except jack.JackError as e:
            raise UserError(f"cannot open JACK MIDI: no JACK server answers ({e}).") from None
        self.clock = FrameClock(self.client.samplerate)
        self._period = self.client.blocksize
        self.port = self.client.midi_inports.register("midi_in")
        self.client.set_process_callback(self._process)
        self.client.activate()
        return self

    @property
    def port_name(self) -> str:
        return self.port.name if self.port is not None else f"{self.name}:midi_in"

    def connect(self, pattern: str) -> list[str]:
        """Connect every JACK MIDI output whose full name matches the regular expression `pattern`."""
        wanted = re.compile(pattern)
        done = []
        for src in self.client.get_ports(is_midi=True, is_output=True):
            if wanted.search(src.name) and not src.name.startswith(f"{self.client.name}:"):
                try:
                    self.client.connect(src, self.port)
                    done.append(src.name)
                except Exception:  # already connected, or it vanished meanwhile
                    pass
        return done

    def cycle_time(self) -> float:
        """The engine's clock (`engine.clock = midi.cycle_time`): start of the current JACK cycle, in seconds.

        Read from the server (`last_frame_time` is the cycle's, whichever client's thread asks), not from our
        own callback's last run: the audio client may run before ours in the same cycle. Call it once per audio
        callback of one JACK period (the engine does): a `CycleCounter` corrects a late callback's reading."""
        if self.client is None or self.clock is None:
            return time.monotonic()
        return self.clock.seconds(self._audio_cycle.next(self.client.last_frame_time, self._period))

    def _process(self, frames: int) -> None:
        clock = self.clock
        cycle = self.client.last_frame_time
        clock.observe(cycle, time.monotonic())
        for offset, data in self.port.incoming_midi_events():
            self.events += 1
            t = clock.seconds(cycle + offset)
            for msg in self.parser.feed(bytes(data), t):
                if msg.channel < 0:
                    continue  # real-time / system common / sysex: nothing to play
                try:
                    self.handler(msg)
                except Exception:
                    self.errors += 1

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.deactivate()
            finally:
                self.client.close()
            self.client = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
