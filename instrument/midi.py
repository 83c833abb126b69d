"""MIDI in: a defensive byte parser and the ports (python-rtmidi) that feed it.

`MidiParser` turns a byte stream into `MidiMessage`s. It handles running status, sysex (counted and skipped,
any length), real-time bytes interleaved anywhere (even inside another message or a sysex), and counts, never
raises on, stray data bytes, truncated messages and undefined status bytes. One parser per port: running status
belongs to a stream.

`MidiInput` always opens its own virtual input port (so any app or controller can be patched into the
instrument), and connects every existing MIDI source, or only those whose name contains `select`. A background
thread polls the port list: a source that vanishes mid-performance is marked lost (the sound goes on; the UI shows
it) and is re-opened when it comes back. Everything runs on rtmidi's and the watcher's threads; the handler (the
Mapper) posts lock-free events to the engine, so MIDI never waits on audio or the other way round.

API: JACK where a JACK server runs (this machine, and Linux studios), else the platform's own (ALSA, CoreMIDI,
Windows MM); override with `api=` ("jack", "alsa", "coremidi", "winmm"). `open_midi()` is what `play` uses: on
JACK it returns the JACK-Client input of instrument/jack_midi.py instead of this class (why: its docstring).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from instrument.errors import UserError

# Data bytes that follow each channel status (high nibble) and system common status byte.
_CHANNEL_LENGTH = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}
_CHANNEL_KIND = {0x80: "note_off", 0x90: "note_on", 0xA0: "poly_aftertouch", 0xB0: "cc", 0xC0: "program",
                 0xD0: "aftertouch", 0xE0: "pitch_bend"}
_COMMON_LENGTH = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0}
_COMMON_KIND = {0xF1: "mtc_quarter", 0xF2: "song_position", 0xF3: "song_select", 0xF6: "tune_request"}
_REALTIME_KIND = {0xF8: "clock", 0xFA: "start", 0xFB: "continue", 0xFC: "stop", 0xFE: "active_sensing",
                  0xFF: "system_reset"}
SYSEX_KEEP = 256  # bytes of a sysex message kept for display; the rest is counted and dropped
FLOOD_LIMIT = 5000  # messages per second per port beyond which channel messages are dropped (and counted)


@dataclass(slots=True)
class MidiMessage:
    kind: str  # note_on, note_off, cc, program, pitch_bend (a = 0..16383), aftertouch, poly_aftertouch, sysex, ...
    channel: int = 0  # 0..15 (-1 for system messages)
    a: int = 0  # note / CC number / program / 14-bit bend value
    b: int = 0  # velocity / CC value / pressure
    time: float = 0.0  # time.monotonic() at arrival
    data: bytes = b""  # sysex payload (first SYSEX_KEEP bytes)

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        ch = f"ch{self.channel + 1:<2} " if self.channel >= 0 else ""
        if self.kind in ("note_on", "note_off"):
            return f"{ch}{self.kind.replace('_', ' ')} {note_name(self.a)} vel {self.b}"
        if self.kind == "cc":
            return f"{ch}CC {self.a} = {self.b}"
        if self.kind == "program":
            return f"{ch}program {self.a}"
        if self.kind == "pitch_bend":
            return f"{ch}bend {self.a - 8192:+d}"
        if self.kind == "sysex":
            return f"sysex {len(self.data)} bytes"
        return f"{ch}{self.kind} {self.a} {self.b}".strip()


def note_name(note: int) -> str:
    return ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")[note % 12] + str(note // 12 - 1)


@dataclass
class ParserStats:
    messages: int = 0
    sysex: int = 0
    realtime: int = 0
    malformed: int = 0  # stray data bytes, truncated messages, undefined status bytes, unterminated sysex
    flood_dropped: int = 0

    def add(self, other: "ParserStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


class MidiParser:
    def __init__(self):
        self.stats = ParserStats()
        self._status = 0  # running status (a channel status byte) or a system common status being read
        self._need = 0  # data bytes the current status takes
        self._data: list[int] = []
        self._sysex: bytearray | None = None
        self._sysex_len = 0
        self._window = 0.0  # flood guard: start of the current one-second window, and its count
        self._in_window = 0

    def feed(self, data, t: float | None = None) -> list[MidiMessage]:
        """Parse `data` (bytes or a list of ints; anything out of 0..255 counts as malformed)."""
        t = time.monotonic() if t is None else t
        out: list[MidiMessage] = []
        for byte in data:
            if not isinstance(byte, int) or not 0 <= byte <= 255:
                self.stats.malformed += 1
                continue
            if byte >= 0xF8:  # real-time: one byte, may interleave anywhere, leaves all state alone
                kind = _REALTIME_KIND.get(byte)
                if kind is None:
                    self.stats.malformed += 1
                else:
                    self.stats.realtime += 1
                    out.append(MidiMessage(kind, -1, 0, 0, t))
                continue
            if self._sysex is not None:
                if byte < 0x80:
                    self._sysex_len += 1
                    if len(self._sysex) < SYSEX_KEEP:
                        self._sysex.append(byte)
                    continue
                if byte == 0xF7:
                    self.stats.sysex += 1
                    out.append(MidiMessage("sysex", -1, self._sysex_len, 0, t, bytes(self._sysex)))
                    self._sysex = None
                    continue
                self.stats.malformed += 1  # a status byte cut the sysex short; the status byte is parsed below
                self._sysex = None
            if byte >= 0x80:
                if self._data:
                    self.stats.malformed += 1  # the previous message was cut short
                    self._data = []
                if byte == 0xF0:
                    self._sysex, self._sysex_len, self._status, self._need = bytearray(), 0, 0, 0
                elif byte < 0xF0:
                    self._status, self._need = byte, _CHANNEL_LENGTH[byte & 0xF0]
                elif byte in _COMMON_LENGTH:
                    self._status, self._need = byte, _COMMON_LENGTH[byte]
                    if self._need == 0:
                        out.append(MidiMessage(_COMMON_KIND[byte], -1, 0, 0, t))
                        self.stats.messages += 1
                        self._status = 0
                else:  # 0xF4, 0xF5 undefined, 0xF7 without a sysex
                    self.stats.malformed += 1
                    self._status, self._need = 0, 0
                continue
            if not self._status:
                self.stats.malformed += 1  # a data byte with no status to belong to
                continue
            self._data.append(byte)
            if len(self._data) < self._need:
                continue
            msg = self._message(t)
            self._data = []
            if self._status >= 0xF0:
                self._status = 0  # system common messages do not set running status
            if msg is not None:
                out.append(msg)
        return out

    def _message(self, t: float) -> MidiMessage | None:
        status, d = self._status, self._data
        if status >= 0xF0:
            self.stats.messages += 1
            value = d[0] | (d[1] << 7) if len(d) == 2 else d[0]
            return MidiMessage(_COMMON_KIND[status], -1, value, 0, t)
        if t - self._window >= 1.0:
            self._window, self._in_window = t, 0
        self._in_window += 1
        if self._in_window > FLOOD_LIMIT:  # channel messages only: those are what reach the engine
            self.stats.flood_dropped += 1
            return None
        self.stats.messages += 1
        high, channel = status & 0xF0, status & 0x0F
        kind = _CHANNEL_KIND[high]
        if high == 0xE0:
            return MidiMessage(kind, channel, d[0] | (d[1] << 7), 0, t)
        if high == 0x90 and d[1] == 0:
            return MidiMessage("note_off", channel, d[0], 0, t)  # note on, velocity 0 = note off
        return MidiMessage(kind, channel, d[0], d[1] if len(d) > 1 else 0, t)


# --- ports -------------------------------------------------------------------------------------------------------
_API_NAMES = {"jack": "API_UNIX_JACK", "alsa": "API_LINUX_ALSA", "coremidi": "API_MACOSX_CORE",
              "winmm": "API_WINDOWS_MM"}


def choose_api(name: str | None = None) -> int:
    """The rtmidi API: `name` if given, else JACK when a JACK server answers, else the platform's native one."""
    import rtmidi

    compiled = rtmidi.get_compiled_api()
    if name:
        api = getattr(rtmidi, _API_NAMES.get(name.lower(), ""), None)
        if api is None or api not in compiled:
            have = ", ".join(k for k, v in _API_NAMES.items() if getattr(rtmidi, v, None) in compiled)
            raise UserError(f"MIDI API {name!r} is not available here (available: {have}).")
        return api
    if rtmidi.API_UNIX_JACK in compiled and _jack_running():
        return rtmidi.API_UNIX_JACK
    for api in (rtmidi.API_LINUX_ALSA, rtmidi.API_MACOSX_CORE, rtmidi.API_WINDOWS_MM):
        if api in compiled:
            return api
    raise UserError("no MIDI system is available (python-rtmidi was built without JACK, ALSA, CoreMIDI or WinMM).")


def watch_ports(midi) -> None:
    """The watcher thread of MidiInput and JackMidiInput: `midi.poll()` every `poll_interval` until `_stop` is set;
    a failed poll is counted in `errors`, never fatal (the next one tries again)."""
    while not midi._stop.wait(midi.poll_interval):
        try:
            midi.poll()
        except Exception:
            midi.errors += 1


def open_midi(handler: Callable[["MidiMessage"], None], name: str = "neuralinst", select: str | None = None,
              api: str | None = None, poll_interval: float = 0.5):
    """The instrument's MIDI input, started. Where a JACK server answers (and `api` is None or "jack"): a JACK
    MIDI port through JACK-Client (instrument/jack_midi.py: frame-accurate times, and libjack is never called
    with the GIL held, which python-rtmidi does and which stalls a running engine's audio callback). Otherwise
    python-rtmidi on the platform's API (ALSA, CoreMIDI, Windows MM). Both have the same face for the UI:
    `status()`, `recent`, `stats`, `ports`, `errors`, `close()`."""
    from instrument.jack_midi import JackMidiInput, jack_server_running

    if api is not None and api.lower() == "jack" or api is None and jack_server_running():
        return JackMidiInput(handler, name=name, select=select, poll_interval=poll_interval).start()
    return MidiInput(handler, name=name, select=select, api=api, poll_interval=poll_interval).start()


def _jack_running() -> bool:
    import os

    from instrument.jack_midi import jack_server_running

    os.environ.setdefault("JACK_NO_START_SERVER", "1")  # probing must never launch a JACK server
    return jack_server_running()


@dataclass
class PortState:
    name: str
    connected: bool = False
    lost: int = 0  # times it vanished
    since: float = field(default_factory=time.monotonic)  # when it last connected or was lost


class MidiInput:
    """The instrument's MIDI inputs. `handler(msg)` is called for every channel message on rtmidi's threads."""

    def __init__(self, handler: Callable[[MidiMessage], None], name: str = "neuralinst", select: str | None = None,
                 api: str | None = None, poll_interval: float = 0.5, recent: int = 24):
        self.handler = handler
        self.name = name
        self.select = select
        self.api_name = api
        self.poll_interval = poll_interval
        self.recent: deque[tuple[float, str, object]] = deque(maxlen=recent)  # (time, port, text or message)
        self.ports: dict[str, PortState] = {}
        self.virtual_port = ""  # the full name of our own input port, as other clients see it
        self.errors = 0  # exceptions raised by the handler (counted; MIDI keeps flowing)
        self._parsers: dict[str, MidiParser] = {}
        self._inputs: dict[str, object] = {}  # port name -> rtmidi.MidiIn
        self._virtual = None
        self._lister = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.api = None

    # --- life cycle ---------------------------------------------------------------------------------------------
    def start(self) -> "MidiInput":
        import rtmidi

        self.api = choose_api(self.api_name)
        try:
            self._virtual = rtmidi.MidiIn(self.api, name=self.name)
            self._lister = rtmidi.MidiIn(self.api, name=f"{self.name}-ports")
        except Exception as e:
            raise UserError(f"cannot open MIDI ({rtmidi.get_api_display_name(self.api)}): {e}.") from None
        if self.api != getattr(rtmidi, "API_WINDOWS_MM", None):  # Windows MM has no virtual ports
            self._open(self._virtual, "virtual", None)
            self.virtual_port = self._own_port_name()
        available = self.available_ports()
        if self.select is not None and not any(self.select.lower() in p.lower() for p in available):
            listing = ", ".join(repr(p) for p in available) if available else "none are connected"
            self.close()
            raise UserError(f"no MIDI input matches {self.select!r} (available: {listing}).")
        self.poll()
        self._thread = threading.Thread(target=watch_ports, args=(self,), name="midi-ports", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        for name in list(self._inputs):
            self._drop(name)
        for m in (self._virtual, self._lister):
            if m is not None:
                m.close_port()
                m.delete()
        self._virtual = self._lister = None

    def __enter__(self):
        return self if self._virtual is not None else self.start()  # open_midi() hands it over started

    def __exit__(self, *exc):
        self.close()

    # --- ports --------------------------------------------------------------------------------------------------
    def available_ports(self) -> list[str]:
        """MIDI sources other than our own clients' ports."""
        try:
            names = self._lister.get_ports()
        except Exception:
            return []
        own = (f"{self.name}:", f"{self.name}-")
        return [n for n in names if not n.startswith(own)]

    def wanted(self, port: str) -> bool:
        return self.select is None or self.select.lower() in port.lower()

    def poll(self) -> None:
        """Open sources that appeared, mark lost the ones that vanished (the watcher calls this)."""
        present = set(self.available_ports())
        for name in list(self._inputs):
            if name not in present:
                self._drop(name)
                state = self.ports[name]
                state.connected, state.lost, state.since = False, state.lost + 1, time.monotonic()
                self.recent.append((time.monotonic(), name, "port lost"))
        for name in sorted(present):
            if name not in self._inputs and self.wanted(name):
                self._connect(name)

    def _connect(self, port: str) -> None:
        import rtmidi

        m = None
        try:
            m = rtmidi.MidiIn(self.api, name=f"{self.name}-in")
            index = m.get_ports().index(port)
            fresh, old = MidiParser(), self._parsers.get(port)
            if old is not None:
                fresh.stats = old.stats  # counts go on; running status from before it vanished does not
            self._parsers[port] = fresh
            self._open(m, "port", index, port)
        except Exception:
            if m is not None:
                m.delete()  # never leak a client (each one is a JACK client)
            return  # it vanished between listing and opening; the next poll tries again
        self._inputs[port] = m
        state = self.ports.setdefault(port, PortState(port))
        state.connected, state.since = True, time.monotonic()
        self.recent.append((time.monotonic(), port, "port connected"))

    def _open(self, m, how: str, index: int | None, port: str = "") -> None:
        label = port or "virtual"
        parser = self._parsers.setdefault(label, MidiParser())
        m.ignore_types(sysex=False, timing=True, active_sense=True)  # clock floods stay out of Python
        m.set_callback(self._callback, (label, parser))
        if how == "virtual":
            m.open_virtual_port("midi_in")
        else:
            m.open_port(index, name="midi_in")

    def _drop(self, port: str) -> None:
        m = self._inputs.pop(port, None)
        if m is not None:
            try:
                m.cancel_callback()
                m.close_port()
                m.delete()
            except Exception:
                pass

    def _own_port_name(self) -> str:
        try:
            import jack  # the JACK-Client package: only to report our port's full name, never required
        except Exception:
            return f"{self.name}:midi_in"
        if self.api is None or "JACK" not in __import__("rtmidi").get_api_name(self.api).upper():
            return f"{self.name}:midi_in"
        try:
            client = jack.Client(f"{self.name}-lookup", no_start_server=True)
            try:
                found = [p.name for p in client.get_ports(f"{self.name}.*:midi_in", is_midi=True, is_input=True)]
            finally:
                client.close()
            return found[-1] if found else f"{self.name}:midi_in"
        except Exception:
            return f"{self.name}:midi_in"

    # --- messages -----------------------------------------------------------------------------------------------
    def _callback(self, event, data) -> None:
        label, parser = data
        message, _delta = event
        now = time.monotonic()
        for msg in parser.feed(message, now):
            if msg.channel < 0 and msg.kind != "sysex":
                continue  # real-time and system common: nothing to play (yet)
            self.recent.append((now, label, msg))  # described when the UI shows it
            if msg.kind == "sysex":
                continue
            try:
                self.handler(msg)
            except Exception:
                self.errors += 1  # a bug downstream must never kill MIDI input

    @property
    def stats(self) -> ParserStats:
        total = ParserStats()
        for p in list(self._parsers.values()):
            total.add(p.stats)
        return total

    def status(self) -> list[tuple[str, str]]:
        """(port, "connected" | "lost") for the UI, our own virtual port first."""
        rows = [(self.virtual_port or "virtual", "listening")] if self._virtual is not None else []
        rows += [(p.name, "connected" if p.connected else "lost — waiting for it") for p in list(self.ports.values())]
        return rows
