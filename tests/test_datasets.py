"""The data set recipes (training/datasets/): the MIDI writer, the seeded pattern generators, and real renders
through FluidSynth + FluidR3 (a few seconds of audio each)."""
from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import soundfile as sf

from training.datasets import SETS, drums, heavy, piano_notes
from training.datasets.render import SAMPLE_RATE, check_tools, render_midi
from training.datasets.smf import TICKS_PER_BEAT, Track, _varlen, write_midi


def parse_midi(data: bytes) -> list[list[tuple[int, bytes]]]:
    """A small independent SMF reader: per track, (absolute tick, status + data bytes) of every event."""
    assert data[:4] == b"MThd"
    fmt, ntracks, division = struct.unpack(">HHH", data[8:14])
    assert fmt == 1 and division == TICKS_PER_BEAT
    pos, tracks = 14, []
    for _ in range(ntracks):
        assert data[pos:pos + 4] == b"MTrk"
        (length,) = struct.unpack(">I", data[pos + 4:pos + 8])
        body, i, tick, events = data[pos + 8:pos + 8 + length], 0, 0, []
        while i < len(body):
            delta = 0
            while True:
                b = body[i]
                i += 1
                delta = (delta << 7) | (b & 0x7F)
                if b < 0x80:
                    break
            tick += delta
            status = body[i]
            if status == 0xFF:
                n = body[i + 2]
                events.append((tick, body[i:i + 3 + n]))
                i += 3 + n
            else:
                n = 2 if (status & 0xF0) in (0x80, 0x90, 0xB0) else 1
                events.append((tick, body[i:i + 1 + n]))
                i += 1 + n
        assert events[-1][1] == b"\xff\x2f\x00"  # every track ends with End of Track
        tracks.append(events)
        pos += 8 + length
    assert pos == len(data)
    return tracks


def test_variable_length_quantities():
    assert _varlen(0) == b"\x00"
    assert _varlen(0x40) == b"\x40"
    assert _varlen(0x80) == b"\x81\x00"
    assert _varlen(0x3FFF) == b"\xff\x7f"
    assert _varlen(0x200000) == b"\x81\x80\x80\x00"


def test_midi_writer_round_trips_notes_programs_and_tempo(tmp_path):
    t = Track("x")
    t.tempo(0, 120)
    t.program(0, 9, 16)
    t.note(1.0, 9, 36, 100, 0.5)
    t.note(1.0, 9, 38, 200, 0.25)  # velocity is clamped to 127
    path = write_midi(tmp_path / "x.mid", [t], end_beat=4)
    (events,) = parse_midi(path.read_bytes())
    msgs = [(tick, bytes(m)) for tick, m in events]
    assert (0, b"\xc9\x10") in msgs
    assert (0, b"\xff\x51\x03" + (500000).to_bytes(3, "big")) in msgs
    assert (480, b"\x99\x24\x64") in msgs and (720, b"\x89\x24\x00") in msgs
    assert (480, b"\x99\x26\x7f") in msgs and (600, b"\x89\x26\x00") in msgs
    assert events[-1][0] == 4 * TICKS_PER_BEAT


def test_generators_are_seeded_and_varied(tmp_path):
    a = drums.song(tmp_path / "a.mid", random.Random(1))
    b = drums.song(tmp_path / "b.mid", random.Random(1))
    assert a == b and (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()
    drawn = [drums.song(tmp_path / f"{i}.mid", random.Random(100 + i)) for i in range(12)]
    assert len({d["bpm"] for d in drawn}) > 6 and len({d["style"] for d in drawn}) > 4
    assert len({d["kit"] for d in drawn}) > 2
    for style in drums.STYLES:  # every style writes real drum notes on channel index 9 with its kit
        rng = random.Random(7)
        info = drums.song(tmp_path / "s.mid", rng, style)
        (events,) = parse_midi((tmp_path / "s.mid").read_bytes())
        ons = [m for _, m in events if m[0] == 0x99 and m[2] > 0]
        assert len(ons) > 8 * info["bars"], style.name
        assert bytes([0xC9, drums.KITS[info["kit"]]]) in [bytes(m) for _, m in events]


def test_heavy_songs_use_distorted_guitars_picked_bass_and_the_power_kit(tmp_path):
    info = heavy.song(tmp_path / "h.mid", random.Random(3), "metal")
    tracks = parse_midi((tmp_path / "h.mid").read_bytes())
    programs = {bytes(m) for events in tracks for _, m in events if m[0] & 0xF0 == 0xC0}
    assert {b"\xc0\x1d", b"\xc1\x1e", b"\xc2\x22", b"\xc9\x10"} <= programs  # 29, 30, 34; kit 16
    guitar_notes = [m[1] for _, m in tracks[1] if m[0] & 0xF0 == 0x90]
    assert len(guitar_notes) > 20 * info["bars"] // 4 and min(guitar_notes) >= heavy.ROOTS[info["key"]]


@pytest.fixture(scope="module")
def fluidsynth():
    check_tools()  # missing fluidsynth or FluidR3 is a failure with the install command, not a skip


def test_a_rendered_beat_is_real_audio_of_the_right_length(tmp_path, fluidsynth):
    rng = random.Random(0)
    style = drums.STYLE_BY_NAME["rock"]
    t = Track("d")
    t.tempo(0, 120)
    t.program(0, 9, drums.KITS["standard"])
    drums.drum_part(t, style, 4, rng)
    write_midi(tmp_path / "d.mid", [t], end_beat=16)
    seconds = render_midi(tmp_path / "d.mid", tmp_path / "d.wav", gain=0.5)
    audio, sr = sf.read(str(tmp_path / "d.wav"), dtype="float32")
    assert sr == SAMPLE_RATE and audio.ndim == 2 and audio.shape[1] == 2
    assert 7.5 < seconds < 10.0  # 4 bars at 120 bpm = 8 s, then the tail, trailing silence trimmed
    assert abs(len(audio) / sr - seconds) < 1e-3
    peak = np.abs(audio).max()
    assert 0.05 < peak < 1.0
    assert np.abs(audio[-int(0.02 * sr):]).max() < 0.01 * peak  # it ends in the decayed tail


def test_piano_note_clips_start_at_the_onset_and_follow_velocity(tmp_path, fluidsynth):
    summary = piano_notes.render_notes(tmp_path, [(60, 40), (60, 120), (72, 90)], "t")
    assert [f["file"] for f in summary["files"]] == ["n060_v040.wav", "n060_v120.wav", "n072_v090.wav"]
    peaks = []
    for f in summary["files"]:
        audio, sr = sf.read(str(tmp_path / f["file"]), dtype="float32")
        assert len(audio) == int(piano_notes.CLIP_SECONDS * sr)
        onset = int(np.argmax(np.abs(audio).max(axis=1) > 1e-3))
        assert onset < 0.015 * sr  # the attack is at the start of the clip
        peaks.append(np.abs(audio).max())
    assert peaks[1] > 3 * peaks[0]


def test_every_set_declares_its_recipe():
    assert set(SETS) == {"piano", "piano-notes", "piano-notes-c4", "drums", "heavy"}
    for recipe in SETS.values():
        assert recipe.KIND_HINT in ("samplernn", "vrnn", "wavegan") and callable(recipe.build)
        assert isinstance(recipe.PREPARE_ARGS, list) and recipe.DESCRIPTION
