"""`piano`: public-domain scores from the music21 corpus, played on FluidR3's sampled grand piano.

The corpus holds only ~14 minutes of solo keyboard music (Clara Schumann, Chopin, Joplin, C. P. E. Bach,
Mozart); all of it is used first, then Beethoven's string quartet op. 18 no. 1 and Bach chorales are played on
the same piano until the set reaches its target length (default 50 min). Every part is re-voiced to GM program 0
(Acoustic Grand Piano); repeat barlines are dropped (some corpus files carry malformed ones, and a written-out
repeat adds no new material). Scores without a tempo mark play at music21's default 120 bpm.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from training.datasets.render import render_midi

NAME = "piano"
KIND_HINT = "samplernn"  # what `neuralinst prepare --kind` the build script uses by default
PREPARE_ARGS: list[str] = []  # `neuralinst prepare` defaults (silences of 0.5 s below -50 dBFS removed)
DESCRIPTION = "music21 public-domain scores on the FluidR3 grand piano (solo piano first, then quartets, chorales)"

# (corpus path, why it is here) in priority order: solo keyboard, then top-ups.
SOLO_PIANO = [
    "schumann_clara/polonaise_op1n1.mxl",
    "schumann_clara/polonaise_op1n2.mxl",
    "schumann_clara/polonaise_op1n3.mxl",
    "schumann_clara/polonaise_op1n4.mxl",
    "schumann_clara/opus17/movement3.xml",  # piano trio movement, every part on piano
    "chopin/mazurka06-2.krn",
    "joplin/maple_leaf_rag.mxl",
    "cpebach/h186.mxl",
    "mozart/k545/movement1_exposition.mxl",
]
QUARTETS = [f"beethoven/opus18no1/movement{i}.mxl" for i in (1, 2, 3, 4)]
CHORALE_LIMIT = 120  # more than the top-up ever needs; chosen in corpus order (BWV number)


def _chorale_paths() -> list[str]:
    from music21 import corpus

    paths = []
    for p in sorted(corpus.getComposer("bach")):
        # "-sc", "-a" ... are alternative versions of a chorale already in the list
        if p.name.startswith("bwv") and p.suffix in (".mxl", ".xml") and "-" not in p.stem:
            paths.append(f"bach/{p.name}")
    return paths[:CHORALE_LIMIT]


def score_to_piano_midi(corpus_path: str, midi_path: Path) -> None:
    """Parse a corpus score, put every part on piano, drop repeat marks, write MIDI."""
    from music21 import bar, corpus, instrument, stream

    score = corpus.parse(corpus_path)
    for measure in score.recurse().getElementsByClass(stream.Measure):
        if isinstance(measure.leftBarline, bar.Repeat):
            measure.leftBarline = None
        if isinstance(measure.rightBarline, bar.Repeat):
            measure.rightBarline = None
    for part in score.parts:
        for inst in list(part.recurse().getElementsByClass(instrument.Instrument)):
            inst.activeSite.remove(inst)
        part.insert(0, instrument.Piano())
    score.write("midi", fp=str(midi_path))


def build(out: Path, seed: int = 0, minutes: float = 50.0, log=print) -> dict:
    """Render until `minutes` of audio exist in `out` (one WAV per work); returns the set's summary."""
    del seed  # the work list is fixed and ordered, so the set is the same every time
    out.mkdir(parents=True, exist_ok=True)
    works = SOLO_PIANO + QUARTETS + _chorale_paths()
    total, rendered, start = 0.0, [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for corpus_path in works:
            if total >= minutes * 60:
                break
            stem = corpus_path.replace("/", "_").rsplit(".", 1)[0]
            wav = out / f"{stem}.wav"
            midi = Path(tmp) / f"{stem}.mid"
            try:
                score_to_piano_midi(corpus_path, midi)
            except Exception as e:  # a corpus file music21 cannot turn into MIDI: skip it, say so
                log(f"  skip {corpus_path}: {type(e).__name__}: {e}")
                continue
            seconds = render_midi(midi, wav, gain=0.4)
            total += seconds
            rendered.append({"file": wav.name, "source": f"music21 corpus: {corpus_path}", "seconds": seconds})
            log(f"  {wav.name}: {seconds:.1f} s (total {total / 60:.1f} min)")
    return {"set": NAME, "files": rendered, "minutes": total / 60, "render_seconds": time.time() - start}
