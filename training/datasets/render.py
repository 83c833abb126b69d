"""Render MIDI to audio with FluidSynth and the FluidR3 General MIDI sound font (both Debian packages).

`fluidsynth -ni -q -O float -g GAIN -r 44100 -F out.wav FluidR3_GM.sf2 in.mid` writes 44.1 kHz stereo float WAV;
float output keeps loud material from clipping (16-bit output clips at gain 0.6). Downmix and resampling are
left to `neuralinst prepare`.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SAMPLE_RATE = 44100


def check_tools() -> None:
    if shutil.which("fluidsynth") is None:
        raise SystemExit("fluidsynth is not installed (Debian: apt-get install fluidsynth).")
    if not SOUNDFONT.exists():
        raise SystemExit(f"{SOUNDFONT} is missing (Debian: apt-get install fluid-soundfont-gm).")


def render_midi(midi: Path, wav: Path, gain: float = 0.4, reverb: bool = True, chorus: bool = True) -> float:
    """Render one MIDI file; returns the rendered duration in seconds."""
    wav = Path(wav)
    wav.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["fluidsynth", "-ni", "-q", "-O", "float", "-g", str(gain), "-r", str(SAMPLE_RATE),
           "-o", f"synth.reverb.active={int(reverb)}", "-o", f"synth.chorus.active={int(chorus)}",
           "-F", str(wav), str(SOUNDFONT), str(midi)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not wav.exists():
        raise RuntimeError(f"fluidsynth failed on {midi}: {result.stderr.strip()[:300]}")
    return trim_tail(wav)


def trim_tail(wav: Path, threshold: float = 1e-4, keep_seconds: float = 0.05) -> float:
    """Cut the silence FluidSynth leaves after the last sound (several seconds); returns the new duration."""
    audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    loud = np.flatnonzero(np.abs(audio).max(axis=1) > threshold)
    end = min(len(audio), (int(loud[-1]) + 1 if len(loud) else 0) + int(keep_seconds * sr))
    if end < len(audio):
        sf.write(str(wav), audio[:end], sr, subtype="FLOAT")
    return end / sr
