"""`heavy`: loud, dense generated riffs (metal, rock, punk) - the genres where Dadabots found SampleRNN strongest.

Two distorted guitars (GM programs 29 Overdriven and 30 Distortion, 0-based), panned left and right and played
a few milliseconds apart so they sound doubled; a picked bass (34) on the riff's roots an octave down; drums on
the Power kit (GM drum program 16) in a matching style. Each song draws from one seeded generator a key (low E,
drop D, C# or B), a scale, a tempo, and two riffs of power chords, palm-muted chugs and single-note runs, arranged
A A B B A A B B with fills; sometimes a half-time breakdown or a lead line on top.
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from training.datasets.drums import STYLE_BY_NAME, drum_part
from training.datasets.render import render_midi
from training.datasets.smf import DRUM_CHANNEL, Track, write_midi

NAME = "heavy"
KIND_HINT = "samplernn"
PREPARE_ARGS: list[str] = []  # `neuralinst prepare` defaults (silences of 0.5 s below -50 dBFS removed)
DESCRIPTION = "generated distorted-guitar/bass/drums riffs (GM 29/30/34 + Power kit): metal, rock and punk"

OVERDRIVE, DISTORTION, PICKED_BASS, POWER_KIT = 29, 30, 34, 16
ROOTS = {"E": 40, "D": 38, "C#": 37, "B": 35}  # lowest guitar string (MIDI), i.e. standard and down-tunings
SCALES = {
    "minor-pentatonic": [0, 3, 5, 7, 10],
    "phrygian": [0, 1, 3, 5, 7, 8, 10],
    "aeolian": [0, 2, 3, 5, 7, 8, 10],
    "blues": [0, 3, 5, 6, 7, 10],
    "locrian": [0, 1, 3, 5, 6, 8, 10],
}
GENRES = {  # genre -> (bpm range, drum styles, chug probability)
    "metal": ((100, 190), ("metal", "rock", "punk"), 0.55),
    "rock": ((90, 140), ("rock", "rock", "breakbeat"), 0.25),
    "punk": ((160, 200), ("punk", "rock"), 0.15),
}

Note = tuple[float, float, int, int, bool]  # (start in 16ths, length in 16ths, semitones above root, velocity, chord)


def riff(rng: random.Random, scale: list[int], chug: float, bars: int = 1) -> list[Note]:
    """A riff on a 16th grid: chugs on the open root, power chords on scale degrees, the odd single-note run."""
    notes: list[Note] = []
    s = 0
    while s < 16 * bars:
        x = rng.random()
        if x < chug:  # palm-muted chugs: short, tight, on the root
            n = rng.choice([1, 2, 2, 3, 4])
            for k in range(n):
                if s + k < 16 * bars:
                    notes.append((s + k, 0.6, 0, 95 + rng.randint(-8, 8), rng.random() < 0.5))
            s += n + rng.choice([0, 0, 1])
        elif x < chug + (1 - chug) * 0.65:  # a sustained power chord
            length = rng.choice([2, 3, 4, 4, 6, 8])
            degree = rng.choice(scale[1:] + [0, 12])
            notes.append((s, length * 0.95, degree, 115, True))
            s += length
        else:  # a quick single-note run up or down the scale
            run = rng.choice([3, 4, 6])
            steps = [d for d in scale + [12, 15]]
            i = rng.randrange(len(steps))
            for k in range(run):
                if s + k < 16 * bars:
                    notes.append((s + k, 0.9, steps[i % len(steps)], 105, False))
                i += rng.choice([-1, 1, 1])
            s += run
    return notes


def _guitar(track: Track, channel: int, notes: list[Note], root: int, bar0: int, bars: int,
            rng: random.Random, lag16: float, transpose: int = 0, half_time: bool = False) -> None:
    riff_bars = max(1, int(max(n[0] for n in notes) // 16) + 1)
    scale16 = 2 if half_time else 1
    for b in range(0, bars, riff_bars * scale16):
        for start, length, degree, vel, chord in notes:
            pos16 = b * 16 + start * scale16
            if pos16 >= bars * 16:
                continue
            beat = bar0 * 4 + (pos16 + lag16 + rng.gauss(0, 0.03)) / 4
            pitch = root + degree + transpose
            dur = length * scale16 / 4
            for p in ([pitch, pitch + 7, pitch + 12] if chord else [pitch]):
                track.note(beat, channel, p, vel + rng.randint(-5, 5), dur)


def _bass(track: Track, channel: int, notes: list[Note], root: int, bar0: int, bars: int,
          half_time: bool = False) -> None:
    """The bass locks to the riff's note onsets, an octave down, no chords."""
    riff_bars = max(1, int(max(n[0] for n in notes) // 16) + 1)
    scale16 = 2 if half_time else 1
    for b in range(0, bars, riff_bars * scale16):
        for start, length, degree, vel, _ in notes:
            pos16 = b * 16 + start * scale16
            if pos16 < bars * 16:
                track.note(bar0 * 4 + pos16 / 4, channel, root - 12 + (degree % 12), vel, length * scale16 / 4)


def song(path: Path, rng: random.Random, genre: str) -> dict:
    bpm_range, drum_styles, chug = GENRES[genre]
    bpm = rng.randint(*bpm_range)
    key = rng.choice(list(ROOTS))
    root = ROOTS[key]
    scale_name = rng.choice(list(SCALES))
    scale = SCALES[scale_name]
    riff_a = riff(rng, scale, chug, bars=rng.choice([1, 2]))
    riff_b = riff(rng, scale, chug, bars=rng.choice([1, 2]))
    drum_style = STYLE_BY_NAME[rng.choice(drum_styles)]
    guitars = Track("guitars")
    bass = Track("bass")
    drums = Track("drums")
    drums.tempo(0, bpm)
    guitars.program(0, 0, OVERDRIVE)
    guitars.program(0, 1, DISTORTION)
    guitars.control(0, 0, 10, 20)  # pan left
    guitars.control(0, 1, 10, 107)  # pan right
    bass.program(0, 2, PICKED_BASS)
    drums.program(0, DRUM_CHANNEL, POWER_KIT)
    sections = ["A", "A", "B", "B", "A", "A", "B", "B"]
    breakdown = rng.random() < 0.4
    if breakdown:
        sections[rng.randrange(4, 7)] = "breakdown"
    lead = rng.random() < 0.35
    bar = 0
    section_bars = 4
    for name in sections:
        notes = riff_b if name == "B" else riff_a
        half = name == "breakdown"
        _guitar(guitars, 0, notes, root, bar, section_bars, rng, 0.0, half_time=half)
        _guitar(guitars, 1, notes, root, bar, section_bars, rng, 0.08, half_time=half)  # ~10 ms late: doubling
        _bass(bass, 2, notes, root, bar, section_bars, half_time=half)
        style = STYLE_BY_NAME["rock"] if half else drum_style
        drum_part(drums, style, section_bars, rng, first_bar=bar, section=section_bars)
        if lead and name == "B":
            line = riff(rng, scale, 0.0, bars=1)
            _guitar(guitars, 3, [n[:4] + (False,) for n in line], root, bar, section_bars, rng, 0.0, transpose=24)
        bar += section_bars
    if lead:
        guitars.program(0, 3, DISTORTION)
    # end on a ringing chord and a crash
    for p in (root, root + 7, root + 12):
        guitars.note(bar * 4, 0, p, 115, 4)
        guitars.note(bar * 4, 1, p, 115, 4)
    bass.note(bar * 4, 2, root - 12, 110, 4)
    drums.note(bar * 4, DRUM_CHANNEL, 49, 115, 1)
    drums.note(bar * 4, DRUM_CHANNEL, 36, 115, 1)
    write_midi(path, [drums, guitars, bass], end_beat=bar * 4 + 4 + 1.5 * bpm / 60)
    return {"genre": genre, "bpm": bpm, "key": key, "scale": scale_name, "drums": drum_style.name,
            "breakdown": breakdown, "lead": lead, "bars": bar + 1}


def build(out: Path, seed: int = 0, minutes: float = 30.0, log=print) -> dict:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    genres = list(GENRES)
    total, files, start, i = 0.0, [], time.time(), 0
    with tempfile.TemporaryDirectory() as tmp:
        while total < minutes * 60:
            midi = Path(tmp) / f"{i:03d}.mid"
            drawn = song(midi, rng, genres[i % len(genres)])
            wav = out / f"{i:03d}_{drawn['genre']}_{drawn['key'].replace('#', 's')}_{drawn['bpm']}bpm.wav"
            seconds = render_midi(midi, wav, gain=0.35)
            total += seconds
            files.append({"file": wav.name, "seconds": seconds, **drawn})
            log(f"  {wav.name}: {seconds:.1f} s (total {total / 60:.1f} min)")
            i += 1
    return {"set": NAME, "seed": seed, "files": files, "minutes": total / 60, "render_seconds": time.time() - start}
