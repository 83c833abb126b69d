"""Capturing what the instrument really plays: a JACK client whose input ports are connected to PortAudio's output
ports. Reusable by any test that has the `jack_server` fixture (tests/conftest.py).

    with JackCapture(seconds=3) as cap:      # connects to every `PortAudio:out_*` port that appears
        ...play...
    audio = cap.audio()                      # float32 [frames, channels], what the server received
    cap.frame_of(t_monotonic)                # the capture frame index at which a monotonic time fell
"""
from __future__ import annotations

import time

import numpy as np


class JackCapture:
    def __init__(self, seconds: float = 5.0, channels: int = 2, source_prefix: str = "PortAudio:out_",
                 name: str = "neuralinst-capture"):
        import jack

        self.client = jack.Client(name, no_start_server=True)
        self.rate = self.client.samplerate
        self.channels = channels
        self.source_prefix = source_prefix
        self.buf = np.zeros((int(seconds * self.rate), channels), np.float32)
        self.frames = 0
        self.first_frame_time: int | None = None  # JACK frame time of buffer frame 0
        # Per captured cycle: its JACK frame time and where it starts in the buffer. Under load the server skips
        # cycles (xruns), so buffer index and JACK time drift apart; these map one onto the other exactly.
        cycles = len(self.buf) // 16 + 1
        self.cycle_frame_time = np.zeros(cycles, np.int64)
        self.cycle_index = np.zeros(cycles, np.int64)
        self.cycle_wall = np.zeros(cycles, np.float64)  # time.monotonic() when the cycle ran
        self.cycles = 0
        self.ports = [self.client.inports.register(f"in_{i}") for i in range(channels)]
        self._connected = False
        self.client.set_process_callback(self._process)

    def _process(self, nframes: int) -> None:
        if self.first_frame_time is None:
            if not self._connected:
                return
            self.first_frame_time = self.client.last_frame_time
        n = min(nframes, len(self.buf) - self.frames)
        if n <= 0 or self.cycles >= len(self.cycle_index):
            return
        self.cycle_frame_time[self.cycles] = self.client.last_frame_time
        self.cycle_index[self.cycles] = self.frames
        self.cycle_wall[self.cycles] = time.monotonic()
        self.cycles += 1
        for c, port in enumerate(self.ports):
            self.buf[self.frames:self.frames + n, c] = port.get_array()[:n]
        self.frames += n

    def __enter__(self) -> "JackCapture":
        self.client.activate()
        return self

    def connect(self, timeout: float = 5.0) -> None:
        """Connect to the instrument's output ports (call after its stream has started)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            sources = self.client.get_ports(self.source_prefix, is_output=True, is_audio=True)
            if len(sources) >= self.channels:
                for src, dst in zip(sources, self.ports):
                    self.client.connect(src, dst)
                self._connected = True  # capture starts at the next JACK cycle
                return
            time.sleep(0.01)
        raise TimeoutError(f"no JACK output ports named {self.source_prefix}* appeared")

    def wait_frames(self, frames: int, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while self.frames < frames and time.monotonic() < end:
            time.sleep(0.01)
        return self.frames >= frames

    def frame_now(self) -> int:
        """JACK's estimate of the current frame time (absolute, like `jack_frame_of`)."""
        return self.client.frame_time

    def jack_frame_of(self, index: int) -> int:
        """The JACK frame time at which buffer frame `index` was played."""
        k = int(np.searchsorted(self.cycle_index[: self.cycles], index, side="right")) - 1
        return int(self.cycle_frame_time[k] + (index - self.cycle_index[k]))

    def index_of(self, frame_time: int) -> int:
        """The first buffer index played at or after JACK frame time `frame_time`."""
        starts = self.cycle_frame_time[: self.cycles]
        k = int(np.searchsorted(starts, frame_time, side="right")) - 1
        if k < 0:
            return 0
        return int(self.cycle_index[k] + min(frame_time - starts[k], self._cycle_len(k)))

    def index_at_wall(self, t: float) -> int:
        """The buffer index of the first cycle that ran after monotonic time `t`."""
        k = int(np.searchsorted(self.cycle_wall[: self.cycles], t, side="left"))
        return int(self.cycle_index[min(k, self.cycles - 1)])

    def wall_of(self, index: int) -> float:
        """When (monotonic) buffer frame `index` was delivered: its cycle's run time + its offset in the cycle."""
        k = int(np.searchsorted(self.cycle_index[: self.cycles], index, side="right")) - 1
        return float(self.cycle_wall[k] + (index - self.cycle_index[k]) / self.rate)

    def _cycle_len(self, k: int) -> int:
        end = self.cycle_index[k + 1] if k + 1 < self.cycles else self.frames
        return int(end - self.cycle_index[k])

    def audio(self) -> np.ndarray:
        return self.buf[: self.frames].copy()

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()

    def __exit__(self, *exc) -> None:
        self.close()


def spectrum(x: np.ndarray, n_fft: int = 4096) -> np.ndarray:
    """Mean magnitude spectrum (Welch, Hann) of a mono signal, normalised to sum 1: a level-independent shape."""
    x = np.asarray(x, np.float64)
    hop = n_fft // 2
    win = np.hanning(n_fft)
    frames = [x[i:i + n_fft] * win for i in range(0, len(x) - n_fft + 1, hop)]
    mag = np.abs(np.fft.rfft(np.array(frames), axis=1)).mean(axis=0)
    return mag / (mag.sum() + 1e-12)


def onset(x: np.ndarray, threshold: float = 0.01, start: int = 0) -> int | None:
    """First frame (from `start`) whose absolute value on any channel exceeds `threshold`."""
    a = np.abs(x[start:]).max(axis=1) if x.ndim == 2 else np.abs(x[start:])
    idx = np.flatnonzero(a > threshold)
    return int(idx[0]) + start if len(idx) else None


def tiny_model(tmp_path_factory, config_name: str, seed: int = 0):
    """A tiny exported model shared by every test module of the session (exported once)."""
    folder = tmp_path_factory.getbasetemp() / f"tiny-models-seed{seed}"
    folder.mkdir(exist_ok=True)
    return export_tiny(config_name, folder, seed)


def export_tiny(config_name: str, folder, seed: int = 0):
    """Export a tiny training config with fixed random weights to `folder/<name>.onnx` (a real streaming model)."""
    from pathlib import Path

    import torch

    from export.onnx_export import export_model
    from training.configs import build_model, get_config

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    path = Path(folder) / f"{config_name}.onnx"
    if not path.exists():
        export_model(build_model(get_config(config_name)), path)
    return path


def find_segment(haystack: np.ndarray, needle: np.ndarray) -> int:
    """Offset in `haystack` where `needle` (both [n, C]) fits best, by FFT cross-correlation of channel 0."""
    h, n = haystack[:, 0].astype(np.float64), needle[:, 0].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(h) + len(n))))
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size)), size)[: len(h) - len(n) + 1]
    return int(np.argmax(corr))


# A controller in its own process (tests/midi_controller.py), as on a stage. In this process it would be a second
# JACK client beside the input under test, and whichever of the two opens with python-rtmidi keeps the GIL while
# libjack opens it; the server finishes an open only at the end of the cycle in progress, which waits for the other
# client's Python process callback to get that GIL: the open times out ("JACK server not running?"). Seen both ways
# round in fresh-clone CI runs; the product itself opens MIDI on JACK with JACK-Client only (instrument/midi.py).
class ControllerPort:
    """A JACK MIDI output `name:out`, owned by a child process that sends what `send_message` hands it."""

    def __init__(self, name: str):
        import subprocess
        import sys
        from pathlib import Path

        script = Path(__file__).with_name("midi_controller.py")
        self.proc = subprocess.Popen([sys.executable, str(script), name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            self.proc.kill()
            raise RuntimeError(f"the controller process for {name!r} did not start ({ready!r})")

    def send_message(self, message) -> None:
        self.proc.stdin.write(" ".join(str(int(b)) for b in message) + "\n")
        self.proc.stdin.flush()

    def delete(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.stdin.close()  # the child closes its client: the port vanishes, as when a cable is pulled
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a starved server can hold the client's close: never leave it behind
                self.proc.kill()
                self.proc.wait()
