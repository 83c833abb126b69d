"""`ResetCue`: a stream that restarts on a note sounds at the note's own frame, as a one-shot does.

A stream preset with `reset_on_note` (VRNN, SampleRNN) restarts its model at every note. Done by the producer
alone, the restart could only be heard behind everything already queued in the ring (4 blocks, 10.7 ms) and at
whichever block boundary the producer reached: a latency of ~14 ms that moved by ~4.6 ms from note to note
(`neuralinst bench note`, 2026-12-03). But a restart is deterministic: the same seed and the same controls give
the same audio (docs/DESIGN.md). So its first `frames` are rendered ahead of time, off the playing stream (the
model's and the resampler's snapshots put the playing stream back untouched), and kept as a `Take`:

    note at ring frame R ─► audio callback: plays take.preroll[0:D] from R, sample-exactly, on the voice bus
                        └─► producer: the old stream fades out (2 ms) from the first frame it has not written;
                            the restarted stream resumes from the take's snapshot at feed frame R + D − F − L
                            (F: a linear crossfade with the pre-roll's last 2 ms, the same signal; L: the
                            effects chain's own delay), so it leaves the ring exactly where the pre-roll ends.

D is the ring plus two blocks plus F plus L: the producer has always written less than that ahead of the note's
frame when it hears of it, so the continuation is never late (it counts `late` if it ever is, and stays aligned).
A take stays valid while the seed and the controls that shape the stream stay put; when a knob moves, the old
take keeps playing (the crossfade hides the difference) and the producer re-arms once the knob rests.
What is not cued: a filter engaged on the stream (the pre-roll plays dry, as one-shot voices do, so the engine
falls back to the producer's restart), soxr-resampled rates (its state cannot be copied), and models without
`snapshot`/`restore` (the test doubles).
"""
from __future__ import annotations

import time
import numpy as np

SETTLE_SECONDS = 0.03  # a knob that has rested this long gets a fresh take
FADE_IN_MS = 1.0  # the pre-roll's first millisecond: the new stream starts over the old one without a click


class Take:
    """One armed restart: the pre-roll the callback plays and where the producer resumes it."""

    __slots__ = ("preroll", "model_mark", "stream_mark")

    def __init__(self, preroll: np.ndarray, model_mark, stream_mark):
        self.preroll = preroll  # [D, channels] float32, faded in and (over its last F frames) out
        self.model_mark = model_mark  # model.snapshot() at pre-roll frame D − F
        self.stream_mark = stream_mark  # the resampler's snapshot at the same frame


class ResetCue:
    """Owned by the producer thread (arming and switching); the callback only reads `take`."""

    def __init__(self, program, frames: int, fade: int):
        self.program = program
        self.frames = int(frames)  # D: pre-roll length
        self.fade = int(fade)  # F: pre-roll → continuation crossfade, and the old stream's fade-out
        if self.frames < 2 * self.fade:
            raise ValueError("the pre-roll must be longer than two fades")
        self.take: Take | None = None
        self.dirty_since: float | None = None
        self._start: int | None = None  # feed frame where the continuation enters (a switch is pending)
        self._switch: Take | None = None
        self._old_pos = 0  # frames of the old stream's fade-out done
        self._in_pos: int | None = None  # frames of the continuation's fade-in done (None: not fading in)
        self._fade_in = max(1, int(round(FADE_IN_MS * program.out_rate / 1000)))
        self.arms = self.switches = self.late = 0

    # --- arming ----------------------------------------------------------------------------------------------
    def invalidate(self, keep_playing: bool = True) -> None:
        """The stream's controls (keep_playing) or its seed (not) changed: arm again soon / now."""
        if not keep_playing:
            self.take = None
        if self.dirty_since is None:
            self.dirty_since = time.monotonic()

    def due(self) -> bool:
        return self.dirty_since is not None and self._start is None and self._in_pos is None and (
            self.take is None or time.monotonic() - self.dirty_since >= SETTLE_SECONDS)

    def arm(self) -> None:
        """Render the restart's first D frames off the playing stream, which is put back exactly as it was."""
        prog = self.program
        model, stream = prog.model, prog.stream
        live_model, live_stream = model.snapshot(), stream.snapshot()
        try:
            prog.begin_fresh()
            head = stream.read(self.frames - self.fade).copy()
            model_mark, stream_mark = model.snapshot(), stream.snapshot()
            tail = stream.read(self.fade)
        finally:
            model.restore(live_model)
            stream.restore(live_stream)
        pre = np.ascontiguousarray(np.concatenate([head, tail]), dtype=np.float32)
        k = np.arange(self._fade_in)
        pre[:self._fade_in] *= (0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / self._fade_in)).astype(np.float32)[:, None]
        pre[-self.fade:] *= (1.0 - (np.arange(self.fade) + 0.5) / self.fade).astype(np.float32)[:, None]
        self.take = Take(pre, model_mark, stream_mark)
        self.dirty_since = None
        self.arms += 1

    # --- the switch (producer) -------------------------------------------------------------------------------
    def request(self, note_frame: int, take: Take, effects_delay: int) -> None:
        """The callback began `take` at ring frame `note_frame`: resume it in the ring where its pre-roll ends."""
        if self._start is None:
            self._old_pos = 0  # a second note while one is pending: the old stream is already fading or gone
        self._start = int(note_frame) + self.frames - self.fade - int(effects_delay)
        self._switch = take
        self._in_pos = None

    @property
    def busy(self) -> bool:
        return self._start is not None or self._in_pos is not None

    def cancel(self) -> None:
        self._start, self._switch, self._in_pos = None, None, None

    def render(self, frames: int, at: int) -> np.ndarray:
        """`frames` of the stream fed at ring frame `at`, while a switch is pending or fading in."""
        stream = self.program.stream
        out = np.zeros((frames, self.program.out_channels), np.float32)
        done = 0
        if self._start is not None:
            s = self._start - at
            n_old = min(max(s, 0), frames)
            if n_old:
                self._fade_old(out[:n_old])
            if s >= frames:
                return out
            take = self._switch
            self.program.model.restore(take.model_mark)
            stream.restore(take.stream_mark)
            if s < 0:  # the producer heard of the note too late: skip ahead to stay aligned with the pre-roll
                stream.read(-s)
                self.late += 1
            self._start, self._switch, self._in_pos = None, None, max(-s, 0)
            self.switches += 1
            done = n_old
        x = stream.read(frames - done)
        pos = self._in_pos + np.arange(frames - done)
        out[done:] = x * np.minimum((pos + 0.5) / self.fade, 1.0).astype(np.float32)[:, None]
        self._in_pos = None if pos[-1] + 1 >= self.fade else int(pos[-1] + 1)
        return out

    def _fade_old(self, dst: np.ndarray) -> None:
        left = self.fade - self._old_pos
        if left <= 0:
            return  # faded out: silence, and the model is not run for it
        m = min(len(dst), left)
        k = self._old_pos + np.arange(m)
        dst[:m] = self.program.stream.read(m) * np.cos(0.5 * np.pi * (k + 0.5) / self.fade).astype(np.float32)[:, None]
        self._old_pos += m
