"""Control events: how MIDI, the UI and scripts talk to the live engine (docs/DESIGN.md §4).

An `Event` is immutable and timestamped at arrival. Any thread may post one; the engine drains them on its own
threads. The queue is a `collections.deque`: `append` and `popleft` are atomic under the GIL and never block, so a
MIDI callback, the UI and the audio callback never wait on each other (no locks).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

NOTE_ON = "note_on"  # a = MIDI note 0..127, b = velocity 0..1
NOTE_OFF = "note_off"  # a = MIDI note
PARAM = "param"  # a = parameter name (see instrument/params.py), b = value in the parameter's range
PITCH_BEND = "pitch_bend"  # b = -1..1 (the wheel), a = semitones of a full throw (the mapping's bend_range)
RESET = "reset"  # re-seed / reset the model state; a = seed (int) or None
TYPES = (NOTE_ON, NOTE_OFF, PARAM, PITCH_BEND, RESET)
# Notes and bends act in the audio callback (latency: one block); the rest act in the producer.
CALLBACK_TYPES = (NOTE_ON, NOTE_OFF, PITCH_BEND)


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    a: Any = None
    b: float = 0.0
    # time.monotonic() at arrival (seconds). The engine schedules every event at `time + schedule delay`, so the
    # latency from arrival to sound is constant instead of depending on where in a block the event arrived.
    time: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"unknown event type {self.type!r} (expected one of {', '.join(TYPES)})")


def note_on(note: int, velocity: float = 1.0, t: float | None = None) -> Event:
    return Event(NOTE_ON, int(note), float(velocity), time.monotonic() if t is None else t)


def note_off(note: int, t: float | None = None) -> Event:
    return Event(NOTE_OFF, int(note), 0.0, time.monotonic() if t is None else t)


def param(name: str, value: float, t: float | None = None) -> Event:
    return Event(PARAM, str(name), float(value), time.monotonic() if t is None else t)


DEFAULT_BEND_RANGE = 2.0  # semitones, the General MIDI default


def pitch_bend(value: float, t: float | None = None, semitones: float = DEFAULT_BEND_RANGE) -> Event:
    return Event(PITCH_BEND, float(semitones), float(value), time.monotonic() if t is None else t)


def reset(seed: int | None = None, t: float | None = None) -> Event:
    return Event(RESET, seed, 0.0, time.monotonic() if t is None else t)


class EventQueue:
    """Multi-producer, single-consumer, lock-free (GIL-atomic deque operations), bounded."""

    def __init__(self, maxlen: int = 4096):
        # A bounded deque drops the oldest event when full instead of growing without limit under a flood.
        self._q: deque[Event] = deque(maxlen=maxlen)

    def post(self, event: Event) -> None:
        self._q.append(event)

    def pop(self) -> Event | None:
        try:
            return self._q.popleft()
        except IndexError:
            return None

    def push_front(self, event: Event) -> None:
        """Give an event back to the consumer's next pop (used for events scheduled in a later block)."""
        self._q.appendleft(event)

    def __len__(self) -> int:
        return len(self._q)
