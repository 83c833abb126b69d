"""`drums`: generated beats in ten styles, rendered with FluidR3's General MIDI drum kits.

Each song draws (from one seeded generator) a style, a tempo in the style's range, a kit (GM channel index 9 with
a program change: 0 Standard, 8 Room, 16 Power, 24 Electronic, 25 TR-808, 32 Jazz), a length of 16-40 bars, and
per-section variations of its groove (kick displacements, ghost notes, open hats), with a fill before every
section change and a crash after it. Timing and velocity are humanised a little; swing comes from the style.
The beat generator is also used by the `heavy` set.
"""
from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from training.datasets.render import render_midi
from training.datasets.smf import DRUM_CHANNEL, Track, write_midi

NAME = "drums"
KIND_HINT = "samplernn"
PREPARE_ARGS: list[str] = []  # `neuralinst prepare` defaults (silences of 0.5 s below -50 dBFS removed)
DESCRIPTION = "generated beats (rock, funk, hip-hop, house, jazz, breakbeat, reggae, punk, metal, bossa) on GM kits"

# General MIDI percussion keys
KICK, KICK2, SIDE, SNARE, CLAP, SNARE2 = 36, 35, 37, 38, 39, 40
HAT, PEDAL_HAT, OPEN_HAT = 42, 44, 46
TOM_LOW, TOM_LOW2, TOM_MID, TOM_MID2, TOM_HIGH, TOM_HIGH2 = 41, 43, 45, 47, 48, 50
CRASH, RIDE, CHINA, RIDE_BELL, TAMBOURINE, CRASH2, COWBELL = 49, 51, 52, 53, 54, 57, 56
SHAKER, CLAVES, RIM = 70, 75, 37
TOMS = [TOM_HIGH2, TOM_HIGH, TOM_MID2, TOM_MID, TOM_LOW2, TOM_LOW]

KITS = {"standard": 0, "room": 8, "power": 16, "electronic": 24, "tr808": 25, "jazz": 32}

Hit = tuple[float, int, int]  # (position in the bar in 16ths, GM key, velocity)


@dataclass
class Style:
    name: str
    bpm: tuple[int, int]
    kits: tuple[str, ...]
    swing: float = 0.0  # 0 = straight 16ths; 1/3 = triplet feel on the off-16th (or off-8th when `swing_8ths`)
    swing_8ths: bool = False


def _hats(rng: random.Random, every: int, key: int = HAT, accent: bool = True) -> list[Hit]:
    return [(float(s), key, (100 if (accent and s % 4 == 0) else 75) + rng.randint(-6, 6)) for s in range(0, 16, every)]


def groove(style: str, rng: random.Random) -> list[Hit]:
    """One bar of a style's basic groove, varied by `rng` (each call can give a different variation)."""
    hits: list[Hit] = []
    r = rng.random
    if style == "rock":
        kicks = [0, 8] + rng.sample([6, 7, 10, 14], k=rng.randint(0, 2))
        hits += [(k, KICK, 110) for k in kicks] + [(4, SNARE, 115), (12, SNARE, 115)]
        hits += _hats(rng, 2, RIDE if r() < 0.25 else HAT)
    elif style == "funk":
        kicks = [0] + rng.sample([3, 6, 7, 10, 11, 14], k=rng.randint(2, 4))
        hits += [(k, KICK, 105) for k in kicks] + [(4, SNARE, 115), (12, SNARE, 115)]
        hits += [(g, SNARE, 35 + rng.randint(0, 15)) for g in rng.sample([1, 3, 7, 9, 11, 15], k=rng.randint(2, 4))]
        hits += [h for h in _hats(rng, 1) if h[0] != 14] + [(14.0, OPEN_HAT, 90)]
    elif style == "hiphop":
        kicks = [0, rng.choice([7, 10]), rng.choice([8, 11, 13])]
        hits += [(k, KICK, 115) for k in kicks] + [(4, SNARE, 118), (12, SNARE, 118)]
        if r() < 0.5:
            hits += [(4, CLAP, 90), (12, CLAP, 90)]
        hits += _hats(rng, 2 if r() < 0.6 else 1)
    elif style == "house":
        hits += [(k, KICK, 120) for k in (0, 4, 8, 12)] + [(4, CLAP, 105), (12, CLAP, 105)]
        hits += [(o, OPEN_HAT, 85) for o in (2, 6, 10, 14)]
        hits += [(s, HAT, 55 + rng.randint(0, 12)) for s in range(0, 16) if s % 2 == 1 and r() < 0.7]
        if r() < 0.4:
            hits += [(s, SHAKER, 60) for s in range(0, 16)]
    elif style == "jazz":  # ride "ding ding-a ding", hat foot on 2 and 4, feathered kick, comping snare
        hits += [(0, RIDE, 95), (4, RIDE, 100), (7, RIDE, 75), (8, RIDE, 95), (12, RIDE, 100), (15, RIDE, 75)]
        hits += [(4, PEDAL_HAT, 80), (12, PEDAL_HAT, 80)] + [(b, KICK, 45) for b in (0, 4, 8, 12)]
        hits += [(s, SNARE, 40 + rng.randint(0, 40)) for s in rng.sample([3, 6, 7, 10, 11, 14, 15], k=rng.randint(1, 3))]
    elif style == "breakbeat":
        kicks = [0, 2, 10] + ([11] if r() < 0.5 else [])
        hits += [(k, KICK, 112) for k in kicks] + [(4, SNARE, 118), (12, SNARE, 118)]
        hits += [(g, SNARE, 45 + rng.randint(0, 25)) for g in rng.sample([7, 9, 14, 15], k=rng.randint(1, 3))]
        hits += _hats(rng, 2, RIDE if r() < 0.5 else HAT)
    elif style == "reggae":  # one drop: kick and rim on beat 3
        hits += [(8, KICK, 110), (8, RIM, 100)] + _hats(rng, 2)
        if r() < 0.5:
            hits += [(s, HAT, 50) for s in (3, 7, 11, 15)]
    elif style == "punk":
        hits += [(s, KICK if s % 4 == 0 else SNARE, 115) for s in range(0, 16, 2)]
        hits += _hats(rng, 2, CRASH if r() < 0.3 else HAT)
    elif style == "metal":  # double kick, backbeat, ride bell or china
        hits += [(s, KICK, 100 + rng.randint(-8, 8)) for s in range(16)] + [(4, SNARE, 120), (12, SNARE, 120)]
        cym = rng.choice([HAT, RIDE_BELL, CHINA, CRASH])
        hits += _hats(rng, 4 if cym in (CHINA, CRASH) else 2, cym)
    elif style == "bossa":
        hits += [(k, KICK, 80) for k in (0, 3, 4, 8, 11, 12)]
        hits += [(s, RIM, 85) for s in rng.choice([(0, 3, 6, 10, 13), (0, 3, 6, 9, 12)])]
        hits += [(s, SHAKER if r() < 0.5 else HAT, 60 + (15 if s % 2 == 0 else 0)) for s in range(16)]
    else:
        raise ValueError(f"unknown style {style!r}")
    return [(float(p), k, v) for p, k, v in hits]


def fill(rng: random.Random, beats: int = 1) -> list[Hit]:
    """A fill over the last `beats` beats of a bar: a snare roll, a tom run down the kit, or a mix of both."""
    start = 16 - 4 * beats
    kind = rng.choice(["snare", "toms", "mixed"])
    hits: list[Hit] = [(0.0, KICK, 110)]
    for i, s in enumerate(range(start, 16)):
        if kind == "snare":
            key = SNARE
        elif kind == "toms":
            key = TOMS[min(len(TOMS) - 1, i * len(TOMS) // (16 - start))]
        else:
            key = rng.choice([SNARE, *TOMS])
        hits.append((float(s), key, 80 + 40 * i // max(1, 16 - start)))
    return hits


STYLES = [
    Style("rock", (88, 150), ("standard", "room", "power")),
    Style("funk", (88, 115), ("standard", "room"), swing=0.12),
    Style("hiphop", (78, 98), ("tr808", "standard", "electronic"), swing=0.3),
    Style("house", (118, 128), ("electronic", "tr808")),
    Style("jazz", (110, 200), ("jazz", "room"), swing=1 / 3, swing_8ths=True),
    Style("breakbeat", (160, 176), ("standard", "electronic", "room")),
    Style("reggae", (68, 86), ("standard", "room"), swing=0.2, swing_8ths=True),
    Style("punk", (165, 200), ("power", "standard")),
    Style("metal", (100, 180), ("power", "room")),
    Style("bossa", (120, 145), ("standard", "jazz")),
]
STYLE_BY_NAME = {s.name: s for s in STYLES}


def _swung(pos16: float, style: Style) -> float:
    """Delay off-beat subdivisions: off-16ths (or off-8ths for 8th-note swing) move by `swing` of a step."""
    if style.swing_8ths:
        return pos16 + (2 * style.swing if pos16 % 4 == 2 else 0.0)
    return pos16 + (style.swing if pos16 % 2 == 1 else 0.0)


def drum_part(track: Track, style: Style, bars: int, rng: random.Random, first_bar: int = 0,
              section: int = 8, velocity_scale: float = 1.0) -> None:
    """Write `bars` bars of the style onto `track` (channel 9), with section variations, fills and crashes."""
    bar_groove = groove(style.name, rng)
    for b in range(bars):
        if b % section == 0 and b > 0 and rng.random() < 0.6:
            bar_groove = groove(style.name, rng)  # a new variation for the new section
        last_of_section = (b % section) == section - 1
        hits = list(bar_groove)
        if last_of_section or (b % 4 == 3 and rng.random() < 0.3):
            beats = rng.choice([1, 1, 2]) if last_of_section else 1
            hits = [h for h in hits if h[0] < 16 - 4 * beats] + fill(rng, beats)[1:]
        if b % section == 0:
            hits = [h for h in hits if h[1] not in (HAT, OPEN_HAT) or h[0] != 0] + [(0.0, CRASH, 115)]
        for pos, key, vel in hits:
            pos = _swung(pos, style) + rng.gauss(0, 0.04)  # ~±5 ms at 120 bpm
            beat = (first_bar + b) * 4 + pos / 4
            v = vel * velocity_scale + rng.gauss(0, 5)
            track.note(max(0.0, beat), DRUM_CHANNEL, key, int(v), 0.25)


def song(path: Path, rng: random.Random, style: Style | None = None) -> dict:
    """Write one generated beat to a MIDI file and return what was drawn."""
    style = style or rng.choice(STYLES)
    bpm = rng.randint(*style.bpm)
    kit = rng.choice(style.kits)
    bars = rng.choice([12, 16, 20, 24, 32])
    track = Track("drums")
    track.tempo(0, bpm)
    track.program(0, DRUM_CHANNEL, KITS[kit])
    drum_part(track, style, bars, rng, section=rng.choice([4, 8]))
    track.note(bars * 4, DRUM_CHANNEL, CRASH, 110, 0.25)  # a final crash to end on
    write_midi(path, [track], end_beat=bars * 4 + 2 * bpm / 60)  # ~2 s of tail
    return {"style": style.name, "bpm": bpm, "kit": kit, "bars": bars}


def build(out: Path, seed: int = 0, minutes: float = 30.0, log=print) -> dict:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    total, files, start, i = 0.0, [], time.time(), 0
    with tempfile.TemporaryDirectory() as tmp:
        while total < minutes * 60:
            style = STYLES[i % len(STYLES)]  # cycle the styles so every one is represented
            midi = Path(tmp) / f"{i:03d}.mid"
            drawn = song(midi, rng, style)
            wav = out / f"{i:03d}_{drawn['style']}_{drawn['kit']}_{drawn['bpm']}bpm.wav"
            seconds = render_midi(midi, wav, gain=0.5)
            total += seconds
            files.append({"file": wav.name, "seconds": seconds, **drawn})
            log(f"  {wav.name}: {seconds:.1f} s (total {total / 60:.1f} min)")
            i += 1
    return {"set": NAME, "seed": seed, "files": files, "minutes": total / 60, "render_seconds": time.time() - start}
