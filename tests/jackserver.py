"""A private JACK server with the dummy driver: the real audio server the tests play through.

Recipe and pitfalls: ../shared/notes/jack-recipe.md. The environment variables must be set before any client
library (PortAudio in sounddevice, python-rtmidi, JACK-Client, pyo) loads libjack, so conftest.py calls
`configure_environment()` at import time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SERVER_NAME = f"neuralinst-test-{os.getpid()}"
RATE = 48000
PERIOD = 128


def configure_environment(name: str = SERVER_NAME) -> None:
    os.environ["JACK_DEFAULT_SERVER"] = name
    os.environ["JACK_NO_START_SERVER"] = "1"
    os.environ["JACK_NO_AUDIO_RESERVATION"] = "1"
    os.environ.setdefault("PYO_GUI_WX", "0")


def _die_with_parent() -> None:
    """Runs in the child before exec: jackd gets SIGTERM if the test process dies (no orphaned servers)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class JackServer:
    def __init__(self, name: str = SERVER_NAME, rate: int = RATE, period: int = PERIOD, realtime: bool = False,
                 portaudio: bool = True):
        """`portaudio=False`: a server for subprocesses only; this process's PortAudio stays on the session's."""
        self.name, self.rate, self.period, self.realtime, self.portaudio = name, rate, period, realtime, portaudio
        self.proc: subprocess.Popen | None = None

    def start(self) -> "JackServer":
        # -t 5000: a client that misses a cycle deadline by < 5 s is not zombified. On a loaded 2-core machine the
        # default 500 ms let jackd evict a client, and PortAudio's stop then waited forever for its callback.
        jackd = shutil.which("jackd")
        self.log = tempfile.NamedTemporaryFile("w+b", prefix=f"{self.name}-", suffix=".log", delete=False)
        if jackd is None:
            raise RuntimeError("jackd is not installed: run ./dev setup (it installs the Debian package jackd2).")
        rt = ["--realtime", "-P", "70"] if self.realtime else ["--no-realtime"]
        self.proc = subprocess.Popen(
            [jackd, *rt, "-t", "5000", "-n", self.name, "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)],
            # Its messages go to a file, never a pipe: under load jackd prints an xrun line per late cycle, and a
            # pipe nobody reads fills up and blocks jackd (and with it every client).
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        ok = subprocess.run(["jack_wait", "-w", "-t", "30", "-s", self.name], capture_output=True, text=True)
        if ok.returncode != 0 or self.proc.poll() is not None:
            self.log.flush()
            err = Path(self.log.name).read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"jackd did not start: {ok.stdout} {ok.stderr} {err}")
        if self.portaudio:
            refresh_portaudio()
        return self

    def died(self) -> str | None:
        """None while the server runs (or was never started); else its exit status and the end of its log."""
        if self.proc is None or self.proc.poll() is None:
            return None
        self.log.flush()
        tail = Path(self.log.name).read_text(errors="replace")[-3000:]
        return f"jackd {self.name} exited with status {self.proc.returncode}; its log ends:\n{tail}"

    def stop(self) -> None:
        if self.portaudio:
            terminate_portaudio()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None) is not None:
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
            self.log = None


def refresh_portaudio() -> None:
    """PortAudio lists the JACK host API only if initialised after the server is up."""
    import sounddevice as sd

    terminate_portaudio()
    sd._initialize()


def terminate_portaudio() -> None:
    """Before jackd stops, PortAudio must be fully terminated, or Python aborts at exit (pa_jack.c assertion)."""
    import sys

    sd = sys.modules.get("sounddevice")
    if sd is None:
        return
    while getattr(sd, "_initialized", 0) > 0:
        sd._terminate()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
