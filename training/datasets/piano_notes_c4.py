"""`piano-notes-c4`: the default one-shot preset's set - only the octave and a half around middle C (F#3..C5),
at 18 velocities (20..127), from the same dry FluidR3 grand piano as `piano-notes` (same clip length and cut).
A WaveGAN trained on it spends its capacity where the default preset plays, instead of on the whole keyboard."""
from __future__ import annotations

from pathlib import Path

from training.datasets.piano_notes import CLIP_SECONDS, CORE, PREPARE_ARGS, render_notes  # noqa: F401

NAME = "piano-notes-c4"
KIND_HINT = "wavegan"
DESCRIPTION = "single FluidR3 grand piano notes F#3..C5 at 18 velocities, 1.1 s clips"
VELOCITIES = [20, 26, 32, 38, 44, 50, 57, 64, 71, 78, 85, 92, 99, 106, 113, 120, 124, 127]


def note_list() -> list[tuple[int, int]]:
    return [(n, v) for n in CORE for v in VELOCITIES]


def build(out: Path, seed: int = 0, minutes: float | None = None, log=print) -> dict:
    del seed, minutes  # the note list is fixed
    return render_notes(out, note_list(), NAME)
