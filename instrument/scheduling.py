"""Thread scheduling for the live engine: who gets the CPU when the machine is busy.

On a stage the audio server runs with real-time scheduling (JACK `-R`, SCHED_FIFO) and so does its client's audio
callback thread, which PortAudio creates through libjack. The engine's producer must then be real-time as well:
otherwise anything else on the machine (a UI redraw, a browser, a training run) can hold the CPU past the ring's few
milliseconds of cover, and the callback, however punctual, finds the ring empty.

The rule (`realtime="auto"`, the default): the producer follows the audio thread. When the callback runs SCHED_FIFO
or SCHED_RR at priority P, the producer asks for SCHED_FIFO at P − `PRODUCER_BELOW_AUDIO` (below the callback, which
must never wait for it, above every ordinary thread). When the callback is an ordinary thread (a server without
real-time scheduling, `--output none`), the producer gets a better nice level only: a real-time producer beside an
ordinary audio thread could take its core. `realtime="on"` asks for SCHED_FIFO regardless, `"off"` never.
Refusals (no CAP_SYS_NICE / rtprio limit) are not errors: the engine plays on and reports what it got.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

PRODUCER_BELOW_AUDIO = 10  # the producer's SCHED_FIFO priority, this far under the audio thread's
PRODUCER_PRIORITY_ON = 50  # the producer's priority with realtime="on" when the audio thread is not real-time
MODES = ("auto", "on", "off")
_NAMES = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE")
          if hasattr(os, n)}


@dataclass(frozen=True)
class ThreadPolicy:
    """How the calling thread is scheduled: a real-time policy with its priority, or an ordinary one and its nice."""

    policy: str = "unknown"
    priority: int = 0  # SCHED_FIFO/RR priority (1..99); 0 for ordinary threads
    nice: int = 0

    @property
    def realtime(self) -> bool:
        return self.policy in ("SCHED_FIFO", "SCHED_RR")

    def __str__(self) -> str:
        if self.realtime:
            return f"{self.policy.removeprefix('SCHED_')} {self.priority}"
        if self.policy == "unknown":
            return "default"
        return f"nice {self.nice}"


def current_policy() -> ThreadPolicy:
    """The calling thread's policy (Linux: scheduling is per thread, and pid 0 is the calling thread)."""
    try:
        policy = os.sched_getscheduler(0)
        priority = os.sched_getparam(0).sched_priority
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (OSError, AttributeError):  # not Linux, or the calls are not allowed
        return ThreadPolicy()
    return ThreadPolicy(_NAMES.get(policy, str(policy)), priority, nice)


def raise_nice(nice: int) -> bool:
    """Favour the calling thread over ordinary work with a per-thread nice level (needs the privilege for < 0)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return True
    except (OSError, AttributeError):
        return False


def make_realtime(priority: int) -> str | None:
    """SCHED_FIFO at `priority` for the calling thread. Returns None on success, else why it was refused."""
    try:
        lo, hi = os.sched_get_priority_min(os.SCHED_FIFO), os.sched_get_priority_max(os.SCHED_FIFO)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(max(lo, min(hi, priority))))
        return None
    except AttributeError:
        return "this platform has no SCHED_FIFO"
    except PermissionError:
        return "real-time scheduling not permitted (needs root, CAP_SYS_NICE or an rtprio limit)"
    except OSError as e:
        return f"real-time scheduling refused ({e.strerror or e})"


def producer_priority(mode: str, audio: ThreadPolicy) -> int | None:
    """The SCHED_FIFO priority the producer should ask for, given the audio thread's policy; None: stay ordinary."""
    if mode not in MODES:
        raise ValueError(f"realtime must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off" or (mode == "auto" and not audio.realtime):
        return None
    if audio.realtime:
        return max(1, audio.priority - PRODUCER_BELOW_AUDIO)
    return PRODUCER_PRIORITY_ON
