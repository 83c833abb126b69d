"""A minimal Standard MIDI File writer (format 1), for the generated beats, riffs and single-note sets.

Only what the recipes need: notes, program changes, tempo. Times are in beats (quarter notes) as floats and
are rounded to ticks when the file is written, so a pattern generator never thinks about ticks.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9  # General MIDI percussion (channel 10 counted from 1)


def _varlen(value: int) -> bytes:
    """MIDI variable-length quantity: 7 bits per byte, high bit set on every byte but the last."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


@dataclass
class Track:
    name: str = ""
    # (tick, order, message bytes); order puts note-offs before note-ons at the same tick
    events: list[tuple[int, int, bytes]] = field(default_factory=list)

    @staticmethod
    def _tick(beat: float) -> int:
        return max(0, int(round(beat * TICKS_PER_BEAT)))

    def program(self, beat: float, channel: int, program: int, bank: int | None = None) -> None:
        if bank is not None:  # bank select MSB, then program change
            self.events.append((self._tick(beat), 1, bytes([0xB0 | channel, 0, bank])))
        self.events.append((self._tick(beat), 2, bytes([0xC0 | channel, program & 0x7F])))

    def control(self, beat: float, channel: int, number: int, value: int) -> None:
        self.events.append((self._tick(beat), 2, bytes([0xB0 | channel, number & 0x7F, value & 0x7F])))

    def note(self, beat: float, channel: int, pitch: int, velocity: int, duration: float) -> None:
        velocity = min(127, max(1, int(velocity)))
        start = self._tick(beat)
        end = max(start + 1, self._tick(beat + duration))
        self.events.append((start, 3, bytes([0x90 | channel, pitch & 0x7F, velocity])))
        self.events.append((end, 0, bytes([0x80 | channel, pitch & 0x7F, 0])))

    def tempo(self, beat: float, bpm: float) -> None:
        usec = int(round(60_000_000 / bpm))
        self.events.append((self._tick(beat), 1, b"\xff\x51\x03" + usec.to_bytes(3, "big")))

    def encode(self, end_beat: float | None = None) -> bytes:
        body = bytearray()
        if self.name:
            name = self.name.encode("ascii", "replace")
            body += _varlen(0) + b"\xff\x03" + _varlen(len(name)) + name
        now = 0
        for tick, _, msg in sorted(self.events, key=lambda e: (e[0], e[1])):
            body += _varlen(tick - now) + msg
            now = tick
        # End of track at `end_beat` leaves room for release and reverb tails (fluidsynth stops at the last one).
        end = max(now, self._tick(end_beat)) if end_beat is not None else now
        body += _varlen(end - now) + b"\xff\x2f\x00"
        return b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def write_midi(path: Path, tracks: list[Track], end_beat: float | None = None) -> Path:
    """Write a format-1 file; `end_beat` (if given) is where every track ends, in beats."""
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), TICKS_PER_BEAT)
    data = header + b"".join(t.encode(end_beat) for t in tracks)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
