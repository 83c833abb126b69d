"""`piano-notes`: single piano notes across the keyboard and velocities, for a playable one-shot instrument.

The same FluidR3 grand piano as `piano`, dry (reverb and chorus off: the instrument adds its own). Each note is
held 0.8 s and cut into a 1.1 s clip starting at its onset (a 16384-sample WaveGAN clip at 16 kHz is 1.02 s, so
the clip holds the attack, the body and the start of the release). The octave and a half around middle C
(F#3..C5, what the default preset plays) gets 12 velocities; the rest of the keyboard (A0..C8) gets 4.
All notes are rendered in one FluidSynth pass, 2 s apart, then cut; `notes.json` lists note and velocity per clip.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from training.datasets.render import SAMPLE_RATE, render_midi
from training.datasets.smf import Track, write_midi

NAME = "piano-notes"
KIND_HINT = "wavegan"
# Keep every clip whole: silence removal would cut the fast-decaying treble notes shorter than one WaveGAN clip.
PREPARE_ARGS = ["--silence-db", "-100", "--min-silence", "5"]
DESCRIPTION = "single FluidR3 grand piano notes, A0..C8, 1.1 s clips, dense around middle C"

HOLD_SECONDS = 0.8
CLIP_SECONDS = 1.1
SPACING_SECONDS = 2.0  # enough for the release to die away before the next note
CORE = range(54, 73)  # F#3 .. C5
CORE_VELOCITIES = [24, 34, 44, 54, 64, 74, 84, 94, 104, 112, 120, 127]
KEYBOARD = range(21, 109)  # A0 .. C8
OTHER_VELOCITIES = [40, 72, 100, 124]


def note_list() -> list[tuple[int, int]]:
    notes = [(n, v) for n in CORE for v in CORE_VELOCITIES]
    notes += [(n, v) for n in KEYBOARD if n not in CORE for v in OTHER_VELOCITIES]
    return notes


def build(out: Path, seed: int = 0, minutes: float | None = None, log=print) -> dict:
    del seed, minutes  # the note list is fixed
    return render_notes(out, note_list(), NAME)


def render_notes(out: Path, notes: list[tuple[int, int]], name: str) -> dict:
    """Render (MIDI note, velocity) pairs as one clip file each in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    track = Track("piano")
    track.tempo(0, 60)  # one beat = one second
    track.program(0, 0, 0)
    for i, (pitch, velocity) in enumerate(notes):
        track.note(i * SPACING_SECONDS, 0, pitch, velocity, HOLD_SECONDS)
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        midi = write_midi(Path(tmp) / "notes.mid", [track], end_beat=len(notes) * SPACING_SECONDS)
        wav = Path(tmp) / "notes.wav"
        render_midi(midi, wav, gain=1.0, reverb=False, chorus=False)
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    assert sr == SAMPLE_RATE
    clip = int(CLIP_SECONDS * sr)
    for i, (pitch, velocity) in enumerate(notes):
        a = int(round(i * SPACING_SECONDS * sr))
        segment = audio[a:a + clip]
        if len(segment) < clip:
            segment = np.pad(segment, ((0, clip - len(segment)), (0, 0)))
        name = f"n{pitch:03d}_v{velocity:03d}.wav"
        sf.write(str(out / name), segment, sr, subtype="FLOAT")
        files.append({"file": name, "note": pitch, "velocity": velocity, "seconds": CLIP_SECONDS})
    (out / "notes.json").write_text(json.dumps(files, indent=1))
    return {"set": name, "files": files, "minutes": len(files) * CLIP_SECONDS / 60,
            "render_seconds": time.time() - start}
