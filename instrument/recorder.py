"""Recording: a tap on exactly what the audio callback plays, written to WAV/FLAC by a non-real-time thread.

The callback copies each block into a lock-free ring (`RingBuffer`) and never touches the file. A writer thread
drains the ring into `soundfile` and, every `flush_seconds`, asks libsndfile to rewrite the header and syncs the
file: if the process is killed (kill -9), the file is still readable and at most the last `flush_seconds` (0.25 s)
plus one ring of audio is lost. If the writer ever falls behind, frames that do not fit the ring are counted in
`dropped_frames` (the playback is never held up).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from instrument.errors import UserError
from instrument.ringbuffer import RingBuffer

SFC_UPDATE_HEADER_NOW = getattr(sf._snd, "SFC_UPDATE_HEADER_NOW", 0x1060)  # libsndfile's sndfile.h value
FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24"), ".aiff": ("AIFF", "FLOAT")}


class Recorder:
    def __init__(self, path: str | os.PathLike, samplerate: int, channels: int, flush_seconds: float = 0.25,
                 ring_seconds: float = 2.0):
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in FORMATS:
            raise UserError(f"cannot record to {self.path.name}: use a .wav, .flac or .aiff file name.")
        if not self.path.parent.exists():
            raise UserError(f"cannot record to {self.path}: the folder {self.path.parent} does not exist.")
        fmt, subtype = FORMATS[ext]
        try:
            self._file = sf.SoundFile(str(self.path), "w", samplerate=int(samplerate), channels=int(channels),
                                      format=fmt, subtype=subtype)
        except (sf.LibsndfileError, OSError) as e:
            raise UserError(f"cannot record to {self.path}: {e}.") from None
        self.samplerate, self.channels = int(samplerate), int(channels)
        self.flush_seconds = flush_seconds
        self.ring = RingBuffer(int(ring_seconds * samplerate), channels)
        self.frames_written = 0
        self.dropped_frames = 0
        self._running = True
        self._sync()  # a valid (empty) file from the first moment
        self._thread = threading.Thread(target=self._run, name="neuralinst-recorder", daemon=True)
        self._thread.start()

    # --- audio callback ----------------------------------------------------------------------------------
    def push(self, block: np.ndarray) -> None:
        n = self.ring.write(block)
        if n < len(block):
            self.dropped_frames += len(block) - n

    # --- writer thread -----------------------------------------------------------------------------------
    def _sync(self) -> None:
        sf._snd.sf_command(self._file._file, SFC_UPDATE_HEADER_NOW, sf._ffi.NULL, 0)
        self._file.flush()  # sf_write_sync: libsndfile's buffers to the OS (a kill -9 cannot lose them now)

    def _drain(self, scratch: np.ndarray) -> int:
        total = 0
        while True:
            n = self.ring.read_into(scratch)
            if n == 0:
                return total
            self._file.write(scratch[:n])
            self.frames_written += n
            total += n

    def _run(self) -> None:
        scratch = np.zeros((4096, self.channels), np.float32)
        last_sync = time.monotonic()
        while self._running:
            self._drain(scratch)
            now = time.monotonic()
            if now - last_sync >= self.flush_seconds:
                self._sync()
                last_sync = now
            time.sleep(0.02)
        self._drain(scratch)

    def close(self) -> Path:
        """Stop, write what is left, close the file; returns its path."""
        if self._running:
            self._running = False
            self._thread.join(10)
            self._file.close()
        return self.path

    @property
    def seconds(self) -> float:
        return self.frames_written / self.samplerate
