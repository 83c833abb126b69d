"""A lock-free single-producer / single-consumer ring of audio frames.

The storage is one preallocated float32 array [capacity, channels]. The producer owns `_write` and the consumer
owns `_read`: both are monotonically increasing frame counts (never wrapped; Python ints do not overflow), and each
side only ever assigns its own index. Under the GIL a plain attribute store is atomic, and the producer stores its
index only after the frames are copied, so the consumer never sees a frame that is not written yet. No locks, no
allocation in `read_into`/`write` beyond the small slice views numpy needs.
"""
from __future__ import annotations

import numpy as np


class RingBuffer:
    def __init__(self, capacity: int, channels: int):
        if capacity < 1 or channels < 1:
            raise ValueError("a ring needs at least one frame and one channel")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._write = 0  # frames ever written (producer's index)
        self._read = 0  # frames ever read (consumer's index)

    # --- either side -------------------------------------------------------------------------------------
    def available(self) -> int:
        """Frames ready for the consumer."""
        return self._write - self._read

    def free(self) -> int:
        """Frames the producer may write without overtaking the consumer."""
        return self.capacity - (self._write - self._read)

    @property
    def frames_written(self) -> int:
        return self._write

    @property
    def frames_read(self) -> int:
        return self._read

    # --- producer ----------------------------------------------------------------------------------------
    def write(self, frames: np.ndarray) -> int:
        """Copy as many of `frames` [n, channels] (or [n, 1], broadcast) as fit; return how many were written."""
        n = min(len(frames), self.free())
        if n <= 0:
            return 0
        start = self._write % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start:start + first] = frames[:first]
        if first < n:
            self._buf[:n - first] = frames[first:n]
        self._write += n  # publish only after the copy
        return n

    # --- consumer ----------------------------------------------------------------------------------------
    def read_into(self, out: np.ndarray) -> int:
        """Copy up to len(out) frames into `out` [n, channels]; return how many were copied (the rest untouched)."""
        n = min(len(out), self._write - self._read)
        if n <= 0:
            return 0
        start = self._read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start:start + first]
        if first < n:
            out[first:n] = self._buf[:n - first]
        self._read += n  # release the space only after the copy
        return n

    def skip(self, n: int) -> int:
        """Drop up to n frames on the consumer side (used to discard a stale ring after a reset)."""
        n = min(n, self._write - self._read)
        self._read += max(n, 0)
        return max(n, 0)
