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
import threading
import time
from collections import deque
from collections.abc import Callable

from instrument.errors import UserError
from instrument.midi import MidiMessage, MidiParser, ParserStats, PortState, watch_ports

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


def jack_server_running() -> bool:
    """Whether a JACK server answers (JACK-Client: libjack is called without the GIL, so probing never stalls an
    audio callback running in this process). Never starts a server."""
    try:
        import jack
    except ImportError:
        return False
    try:
        client = jack.Client("neuralinst-probe", no_start_server=True)
    except Exception:  # jack.JackOpenError: no server
        return False
    client.close()
    return True


class JackMidiInput:
    """The instrument's JACK MIDI input port `<name>:midi_in`, and the sources it connects to it.

    `handler(msg)` gets every channel message, on JACK's process thread, timed to the frame. A watcher thread
    connects every MIDI source (or only those whose name contains `select`), marks a source that vanished
    mid-performance lost and reconnects it when it comes back; any client can also be patched in by hand.

    Why JACK-Client rather than python-rtmidi's JACK backend beside a running engine: python-rtmidi keeps the GIL
    while libjack opens or closes a client (10-25 ms per call, measured), and the server finishes a client's open
    or close only at the end of the cycle in progress -- which cannot end while the engine's audio callback, in
    Python, waits for that GIL. Then the server gives up after its client timeout, the open fails ("JACK server
    not running?") and the audio misses the cycle (seen every time with the engine and the opener on one core).
    JACK-Client (cffi) lets go of the GIL in every libjack call, so opening, connecting and closing ports never
    hold up the audio callback.
    """

    def __init__(self, handler: Callable[[MidiMessage], None], name: str = "neuralinst-midi",
                 select: str | None = None, poll_interval: float = 0.5, recent: int = 24):
        self.handler = handler
        self.name = name
        self.select = select
        self.poll_interval = poll_interval
        self.parser = MidiParser()  # one stream: JACK MIDI events are whole messages, whichever source sent them
        self.errors = 0  # exceptions raised by the handler (counted; MIDI keeps flowing)
        self.events = 0  # raw JACK MIDI events read
        self.recent: deque[tuple[float, str, object]] = deque(maxlen=recent)  # (time, source, text or message)
        self.ports: dict[str, PortState] = {}  # the sources the watcher connected, by full port name
        self.client = None
        self.port = None
        self.clock: FrameClock | None = None
        # The engine callback's cycles (via cycle_time). Our own MIDI callback reads the server's frame directly:
        # there a late callback and a skipped one look alike, and counting made notes early (measured: 8 % of
        # notes clamped to offset 0 under load 8) where reading directly makes ~2 % one period late.
        self._audio_cycle = CycleCounter()
        self._period = 0
        self._source = "midi_in"  # the label of incoming messages: the one connected source, when there is one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        available = self.available_ports()
        if self.select is not None and not any(self.wanted(p) for p in available):
            listing = ", ".join(repr(p) for p in available) if available else "none are connected"
            self.close()
            raise UserError(f"no MIDI input matches {self.select!r} (available: {listing}).")
        self.poll()
        self._stop.clear()
        self._thread = threading.Thread(target=watch_ports, args=(self,), name="midi-ports", daemon=True)
        self._thread.start()
        return self

    @property
    def port_name(self) -> str:
        return self.port.name if self.port is not None else f"{self.name}:midi_in"

    virtual_port = port_name  # the name MidiInput (rtmidi) gives its own input port

    @property
    def period(self) -> int:
        """The JACK server's period in frames (0 before start)."""
        return self._period

    # --- sources ------------------------------------------------------------------------------------------------
    def available_ports(self) -> list[str]:
        """MIDI sources in the JACK graph other than our own ports."""
        if self.client is None:
            return []
        try:
            own = f"{self.client.name}:"
            return [p.name for p in self.client.get_ports(is_midi=True, is_output=True)
                    if not p.name.startswith(own)]
        except Exception:
            return []

    def wanted(self, port: str) -> bool:
        return self.select is None or self.select.lower() in port.lower()

    def poll(self) -> None:
        """Connect sources that appeared, mark lost the ones that vanished (the watcher calls this)."""
        if self.client is None:
            return
        present = set(self.available_ports())
        try:
            linked = {p.name for p in self.client.get_all_connections(self.port)}
        except Exception:
            linked = set()
        now = time.monotonic()
        for name, state in self.ports.items():
            if state.connected and name not in present:
                state.connected, state.lost, state.since = False, state.lost + 1, now
                self.recent.append((now, name, "port lost"))
        for name in sorted(present):
            if not self.wanted(name) or name in linked:
                continue
            try:
                self.client.connect(name, self.port)
            except Exception:  # it vanished between listing and connecting; the next poll tries again
                continue
            linked.add(name)
            state = self.ports.setdefault(name, PortState(name))
            state.connected, state.since = True, now
            self.recent.append((now, name, "port connected"))
        for name in linked & set(self.ports):  # connected again by hand, or never dropped
            self.ports[name].connected = True
        self._source = next(iter(linked)) if len(linked) == 1 else "midi_in"

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

    def status(self) -> list[tuple[str, str]]:
        """(port, state) for the UI, our own input port first."""
        rows = [(self.port_name, "listening")] if self.port is not None else []
        rows += [(p.name, "connected" if p.connected else "lost — waiting for it") for p in list(self.ports.values())]
        return rows

    @property
    def stats(self) -> ParserStats:
        return self.parser.stats

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
                if msg.channel < 0 and msg.kind != "sysex":
                    continue  # real-time / system common: nothing to play
                self.recent.append((t, self._source, msg))  # no formatting in the process cycle: str() when shown
                if msg.kind == "sysex":
                    continue
                try:
                    self.handler(msg)
                except Exception:
                    self.errors += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self.client is not None:
            try:
                self.client.deactivate()
            finally:
                self.client.close()
            self.client = None

    def __enter__(self):
        return self if self.client is not None else self.start()  # open_midi() hands it over started

    def __exit__(self, *exc):
        self.close()
