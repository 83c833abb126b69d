"""`neuralinst prepare`: real audio in, a data set folder out; bad input reported by name; leak-free splits."""
import json

import numpy as np
import pytest
import soundfile as sf

from neuralinst import cli
from training.data import load_split, read_manifest
from training.prepare import remove_silence, to_int16

SR = 16000


@pytest.fixture(scope="module")
def piano(fixtures_dir):
    audio, sr = sf.read(fixtures_dir / "piano.flac", dtype="float32")
    assert sr == SR
    return audio


def prepare(*args) -> int:
    return cli.main(["prepare", *map(str, args)])


def arrays(folder):
    return {s: np.asarray(load_split(folder, s)) for s in ("train", "valid", "test")}


def test_writes_the_data_set_folder(fixtures_dir, tmp_path, piano):
    out = tmp_path / "ds"
    assert prepare(fixtures_dir / "piano.flac", "--out", out, "--kind", "vrnn") == 0
    m = read_manifest(out)
    data = arrays(out)
    for split, a in data.items():
        assert a.dtype == np.int16 and a.shape[1:] == (1, 8000)  # VRNN: 0.5 s chunks
        assert m["splits"][split]["chunks"] == len(a)
    n = sum(len(a) for a in data.values())
    assert len(data["valid"]) >= 1 and len(data["test"]) >= 1
    assert 0.8 <= len(data["train"]) / n <= 0.9  # 88/6/6 within what 16 chunks allow
    assert isinstance(load_split(out, "train"), np.memmap)
    assert m["sample_rate"] == SR and m["channels"] == 1 and m["chunk_samples"] == 8000 and m["seed"] == 0
    assert m["sources"][0]["path"].endswith("piano.flac") and m["sources"][0]["seconds"] == pytest.approx(8.0)
    train = data["train"].astype(np.float64) / 32768
    assert m["mean"] == pytest.approx(train.mean(), abs=1e-4) and m["std"] == pytest.approx(train.std(), rel=0.02)
    # every chunk is the source audio at the position the manifest records
    for split, a in data.items():
        for k, (seg, offset) in enumerate(m["chunks"][split]):
            assert m["segments"][seg]["split"] == split
            np.testing.assert_array_equal(a[k, 0], to_int16(piano[offset:offset + 8000]))


def test_split_is_deterministic_and_never_leaks_overlapping_chunks(fixtures_dir, tmp_path):
    common = [fixtures_dir / "piano.flac", "--kind", "samplernn", "--chunk-seconds", "0.25",
              "--hop-fraction", "0.25", "--segment-seconds", "1"]
    for name, seed in (("a", 0), ("b", 0), ("c", 7)):
        assert prepare(*common, "--out", tmp_path / name, "--seed", seed) == 0
    a, b, c = (arrays(tmp_path / n) for n in "abc")
    for split in a:
        np.testing.assert_array_equal(a[split], b[split])
    ma, mc = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "c")
    assert ma["chunks"] == read_manifest(tmp_path / "b")["chunks"]
    assert ma["chunks"] != mc["chunks"]  # another seed, another split
    for m in (ma, mc):
        chunk, hop = m["chunk_samples"], m["hop_samples"]
        assert hop < chunk  # chunks overlap, so a careless split would leak
        spans = {s: [(m["segments"][g]["source"], o, o + chunk) for g, o in m["chunks"][s]] for s in m["chunks"]}
        assert len(spans["train"]) > 3 * len(m["segments"])  # several overlapping chunks per segment
        for s1 in spans:
            for s2 in spans:
                if s1 != s2:
                    for src1, a1, b1 in spans[s1]:
                        for src2, a2, b2 in spans[s2]:
                            assert src1 != src2 or b1 <= a2 or b2 <= a1, f"{s1} and {s2} share audio"


def test_removes_long_silences_only(tmp_path, piano):
    sound = piano[:2 * SR]
    short_gap = np.zeros(int(0.2 * SR), np.float32)
    long_gap = np.full(int(1.5 * SR), 1e-4, np.float32)  # -80 dBFS hiss
    x = np.concatenate([sound, short_gap, sound, long_gap, sound])[None]
    kept = remove_silence(x, SR, silence_db=-50, min_silence=0.5)
    assert kept.shape[1] == pytest.approx(6.2 * SR, abs=0.04 * SR)
    assert remove_silence(x, SR, silence_db=-50, min_silence=2.0).shape[1] == x.shape[1]


def test_resamples_and_keeps_stereo(tmp_path, piano):
    src = tmp_path / "in"
    src.mkdir()
    import soxr

    hi = soxr.resample(piano, SR, 44100)
    stereo = np.stack([hi, -0.5 * hi], axis=1)
    sf.write(src / "stereo.wav", stereo, 44100, subtype="FLOAT")
    assert prepare(src, "--out", tmp_path / "st", "--kind", "wavegan", "--stereo", "--sample-rate", "22050") == 0
    m = read_manifest(tmp_path / "st")
    train = np.asarray(load_split(tmp_path / "st", "train"))
    assert m["channels"] == 2 and m["sample_rate"] == 22050 and train.shape[1:] == (2, 16384)  # one WaveGAN clip
    assert m["kept_seconds"] == pytest.approx(8.0, abs=0.05)
    np.testing.assert_allclose(train[:, 1], -0.5 * train[:, 0], atol=2)  # channels kept apart
    assert prepare(src, "--out", tmp_path / "mono", "--kind", "wavegan") == 0
    assert np.asarray(load_split(tmp_path / "mono", "train")).shape[1] == 1  # downmixed by default


def test_decodes_a_folder_of_mixed_formats(tmp_path, piano):
    src = tmp_path / "album" / "disc 1"
    src.mkdir(parents=True)
    sf.write(src / "a.mp3", piano, SR, format="MP3")
    sf.write(src / "b.ogg", piano[: 6 * SR], SR, format="OGG", subtype="VORBIS")
    sf.write(src / "c.wav", piano[: 4 * SR], 48000 // 3, subtype="PCM_24")
    assert prepare(tmp_path / "album", "--out", tmp_path / "ds", "--kind", "vrnn") == 0
    m = read_manifest(tmp_path / "ds")
    assert [s["path"].rsplit("/", 1)[-1] for s in m["sources"]] == ["a.mp3", "b.ogg", "c.wav"]
    assert m["kept_seconds"] == pytest.approx(18.0, abs=0.1)
    assert sum(v["chunks"] for v in m["splits"].values()) == 36  # 0.5 s chunks, one per segment on this little data


def test_bad_files_are_skipped_by_name(tmp_path, fixtures_dir, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    sf.write(src / "silent.flac", np.zeros(SR * 3, np.float32), SR)
    (src / "notes.txt").write_text("not audio, not considered")
    assert prepare(src, fixtures_dir / "piano.flac", "--out", tmp_path / "ds", "--kind", "vrnn") == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.wav: unreadable" in err and "silent.flac: silent" in err
    m = read_manifest(tmp_path / "ds")
    assert [s["path"].rsplit("/", 1)[-1] for s in m["sources"]] == ["piano.flac"]
    assert {s["path"].rsplit("/", 1)[-1] for s in m["skipped"]} == {"broken.wav", "silent.flac"}


@pytest.mark.parametrize("case", ["empty folder", "missing path", "only bad files", "too short"])
def test_unusable_input_ends_with_one_sentence(case, tmp_path, fixtures_dir, capsys):
    src = tmp_path / "in"
    src.mkdir()
    if case == "missing path":
        src = tmp_path / "nowhere"
    elif case == "only bad files":
        (src / "broken.ogg").write_bytes(b"OggS garbage")
        sf.write(src / "silent.wav", np.zeros(SR, np.float32), SR)
    elif case == "too short":
        src = fixtures_dir / "piano.flac"
    extra = ["--chunk-seconds", "3"] if case == "too short" else []
    assert prepare(src, "--out", tmp_path / "ds", "--kind", "vrnn", *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("neuralinst prepare: ") and "Traceback" not in err and err.endswith(".")
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_refuses_to_overwrite_a_folder_that_is_not_a_data_set(tmp_path, fixtures_dir, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert prepare(fixtures_dir / "piano.flac", "--out", tmp_path / "mine", "--kind", "vrnn") == 1
    assert "not a data set" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
