"""The quality measure (`instrument/evaluate.py`, `neuralinst eval`): the maths, the baselines on real audio,
the picture, and the command's clean errors. Real piano (tests/fixtures/piano.flac) and synthetic signals."""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf

from instrument import evaluate as ev
from neuralinst.cli import main as cli_main

SR = 16000


@pytest.fixture(scope="module")
def piano(fixtures_dir) -> np.ndarray:
    audio, sr = sf.read(str(fixtures_dir / "piano.flac"), dtype="float32")
    assert sr == SR and audio.ndim == 1 and len(audio) >= 7 * SR
    return audio.astype(np.float64)


def thirds(piano: np.ndarray):
    """Three disjoint parts of the same recording, interleaved 1 s blocks: reference, floor, 'model'."""
    block = SR
    n = len(piano) // block
    blocks = piano[: n * block].reshape(n, block)
    return (blocks[0::3].reshape(-1), blocks[1::3].reshape(-1), blocks[2::3].reshape(-1))


def random_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- the Fréchet distance ---------------------------------------------------------------------------------------
def test_frechet_of_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    mu, cov = rng.standard_normal(16), random_cov(rng, 16)
    assert ev.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)


def test_frechet_matches_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert ev.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)
    # commuting covariances (same eigenvectors): |dmu|^2 + sum (sqrt a - sqrt b)^2
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    a, b = rng.uniform(0.1, 4, 8), rng.uniform(0.1, 4, 8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = ev.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_general_case_agrees_with_eigenvalues_of_the_product_and_is_symmetric():
    rng = np.random.default_rng(2)
    c1, c2 = random_cov(rng, 12), random_cov(rng, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    # tr sqrt(C1 C2) = sum of sqrt of the (real, positive) eigenvalues of C1 C2: an independent route
    cross = np.sqrt(np.linalg.eigvals(c1 @ c2).real).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * cross
    d12 = ev.frechet_distance(mu1, c1, mu2, c2)
    assert d12 == pytest.approx(expected, rel=1e-9)
    assert ev.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(d12, rel=1e-10)


def test_frechet_of_samples_estimates_the_true_distance():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20000, 4))
    y = rng.standard_normal((20000, 4)) * 2.0 + np.array([1.0, 0, 0, 2.0])
    truth = 1.0 + 4.0 + 4 * (2.0 - 1.0) ** 2
    assert ev.frechet_between(ev.gaussian_stats(x), ev.gaussian_stats(y)) == pytest.approx(truth, rel=0.05)


def test_frechet_refuses_mismatched_dimensions():
    with pytest.raises(ValueError):
        ev.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- the features -------------------------------------------------------------------------------------------------
def test_logmel_of_a_full_scale_sine_peaks_near_0_db_in_its_band_at_any_input_rate():
    for sr in (16000, 44100):
        t = np.arange(sr * 2) / sr
        logmel = ev.logmel_frames(np.sin(2 * np.pi * 1000 * t), sr)
        assert logmel.shape[1] == ev.N_MELS
        profile = logmel[5:-5].mean(axis=0)
        peak_band = int(np.argmax(profile))
        centres = ev._mel_to_hz(np.linspace(ev._hz_to_mel(ev.F_MIN), ev._hz_to_mel(ev.F_MAX), ev.N_MELS + 2))[1:-1]
        assert abs(centres[peak_band] - 1000) < 150
        assert -6 < profile[peak_band] < 3
        assert profile[-1] < -60  # far bands sit near the floor


def test_shape_features_ignore_level_and_level_features_measure_it(piano):
    ref, floor, model = thirds(piano)
    shape_ref = ev.gaussian_stats(ev.frame_features(ev.logmel_frames(ref, SR))[0])

    def shape_fd(x):
        return ev.frechet_between(ev.gaussian_stats(ev.frame_features(ev.logmel_frames(x, SR))[0]), shape_ref)

    assert shape_fd(model * 0.5) == pytest.approx(shape_fd(model), rel=0.05)  # -6 dB: same timbre
    loud = ev.evaluate_audio(model, ref, SR, floor=floor)
    quiet = ev.evaluate_audio(model * 0.5, ref, SR, floor=floor)
    assert 4.0 < quiet.model.fd_level - loud.model.fd_level < 8.0  # the level distance sees the 6 dB
    assert quiet.model.fd > loud.model.fd  # and the score's distance counts it (once)
    assert quiet.model.fd - loud.model.fd < 0.2 * loud.model.fd  # without letting it dominate


def test_flatness_and_silence():
    rng = np.random.default_rng(4)
    t = np.arange(SR * 2) / SR
    noise = rng.standard_normal(SR * 2) * 0.1
    assert 0.45 < ev.spectral_flatness(noise, SR) < 0.65
    assert ev.spectral_flatness(0.5 * np.sin(2 * np.pi * 440 * t), SR) < 0.01
    assert np.isnan(ev.spectral_flatness(ev.dithered_silence(SR, rng), SR))
    assert ev.silent_fraction(ev.dithered_silence(SR * 2, rng), SR) == 1.0
    assert ev.silent_fraction(noise, SR) == 0.0
    half = np.concatenate([noise[:SR], np.zeros(SR)])
    assert 0.4 < ev.silent_fraction(half, SR) < 0.6


def test_pink_noise_has_a_minus_3_db_per_octave_slope():
    rng = np.random.default_rng(5)
    x = ev.pink_noise(SR * 8, 0.1, rng)
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    low = spec[(f > 200) & (f < 400)].mean()
    high = spec[(f > 1600) & (f < 3200)].mean()
    assert 10 * np.log10(low / high) == pytest.approx(9.0, abs=1.5)  # three octaves
    assert np.sqrt((x ** 2).mean()) == pytest.approx(0.1, rel=1e-6)


# --- the score on real audio --------------------------------------------------------------------------------------
def test_real_piano_scores_near_zero_and_noise_near_one(piano):
    ref, floor, model = thirds(piano)
    real = ev.evaluate_audio(model, ref, SR, floor=floor, seed=0)
    assert abs(real.score) < 0.3, real.table()
    rms = float(np.sqrt((ref ** 2).mean()))
    rng = np.random.default_rng(123)  # a different pink noise from the baseline's
    pink = ev.evaluate_audio(ev.pink_noise(len(model), rms, rng), ref, SR, floor=floor, seed=0)
    assert pink.score == pytest.approx(1.0, abs=0.15), pink.table()
    white = ev.evaluate_audio(ev.white_noise(len(model), rms, rng), ref, SR, floor=floor, seed=0)
    silence = ev.evaluate_audio(ev.dithered_silence(len(model), rng), ref, SR, floor=floor, seed=0)
    assert white.score > 1.0 and silence.score > 1.0
    # the baselines bracket real audio: floor < every noise
    b = real.baselines
    assert b["validation"].fd < min(b["white noise"].fd, b["pink noise"].fd,
                                          b["silence+dither"].fd)


def test_the_score_is_symmetric_in_model_and_floor(piano):
    ref, floor, model = thirds(piano)
    a = ev.evaluate_audio(model, ref, SR, floor=floor)
    b = ev.evaluate_audio(floor, ref, SR, floor=model)
    assert a.model.fd == pytest.approx(b.baselines["validation"].fd, rel=1e-9)
    assert b.model.fd == pytest.approx(a.baselines["validation"].fd, rel=1e-9)
    assert a.model.fd_dynamics == pytest.approx(b.baselines["validation"].fd_dynamics, rel=1e-9)
    assert a.baselines["pink noise"].fd == pytest.approx(b.baselines["pink noise"].fd, rel=1e-9)
    # so each component's scores are mirror images: (dA - dB) / (dP - dB) and (dB - dA) / (dP - dA)
    assert np.sign(a.score_timbre) == -np.sign(b.score_timbre)
    assert np.sign(a.score_dynamics) == -np.sign(b.score_dynamics)


def test_a_different_kind_of_music_scores_worse_than_the_same_piano(piano):
    """Drum-like synthetic hits (decaying noise bursts with a low thump) against real piano."""
    ref, floor, model = thirds(piano)
    rng = np.random.default_rng(6)
    n = len(model)
    t = np.arange(SR // 4) / SR
    hit = rng.standard_normal(len(t)) * np.exp(-t * 30) * 0.3 + np.sin(2 * np.pi * 60 * t) * np.exp(-t * 12) * 0.5
    drums = np.zeros(n)
    for start in range(0, n - len(t), SR // 4):
        drums[start:start + len(t)] += hit * rng.uniform(0.5, 1.0)
    same = ev.evaluate_audio(model, ref, SR, floor=floor)
    other = ev.evaluate_audio(drums, ref, SR, floor=floor)
    assert other.model.fd > 3 * same.model.fd
    assert other.score > 0.5 > same.score


def test_noise_with_the_musics_own_spectrum_fools_timbre_but_not_dynamics(piano):
    ref, floor, model = thirds(piano)
    real = ev.evaluate_audio(model, ref, SR, floor=floor)
    matched = ev.evaluate_audio(ev.matched_noise(model, np.random.default_rng(1)), ref, SR, floor=floor)
    assert matched.score_timbre < 0.4  # frame statistics alone are nearly fooled...
    assert matched.score_dynamics > 0.6 and matched.score_dynamics > real.score_dynamics + 0.4  # ...time is not
    assert matched.score > real.score + 0.2
    assert 0.6 < real.scores(real.baselines["matched noise"])[2] < 1.3


def test_a_degenerate_ruler_gives_nan_not_a_huge_number():
    rng = np.random.default_rng(8)
    noise = ev.pink_noise(SR * 6, 0.1, rng)  # the "real" audio is pink noise: the floor is as far as the ceiling
    result = ev.evaluate_audio(ev.pink_noise(SR * 3, 0.1, rng), noise[: SR * 3], SR, floor=noise[SR * 3:])
    assert np.isnan(result.score_timbre) and np.isnan(result.score_dynamics) and np.isnan(result.score)
    assert "nan" in result.table()


def test_without_a_floor_the_reference_is_split_in_halves(piano):
    result = ev.evaluate_audio(piano[:SR * 3], piano[SR * 3:], SR)
    assert result.seconds == pytest.approx(2.0, abs=0.01)  # 5 s split in alternating 2 s blocks -> 2 s each
    assert abs(result.score) < 0.5
    assert result.model.seconds == result.baselines["pink noise"].seconds == pytest.approx(result.seconds, rel=1e-3)


def test_stereo_and_batched_audio_and_other_rates_are_accepted(piano):
    ref, floor, model = thirds(piano)
    import soxr

    stereo44 = np.stack([model, model]).astype(np.float32)
    stereo44 = soxr.resample(stereo44.T, SR, 44100).T
    a = ev.evaluate_audio(stereo44, ref, 44100, floor=floor, reference_sr=SR)
    b = ev.evaluate_audio(model, ref, SR, floor=floor)
    assert a.model.fd == pytest.approx(b.model.fd, rel=0.1)
    batched = model[: (len(model) // 4) * 4].reshape(4, 1, -1)
    c = ev.evaluate_audio(batched, ref, SR, floor=floor)
    assert c.model.fd == pytest.approx(b.model.fd, rel=0.02)


def test_too_little_audio_is_a_user_error(piano):
    from instrument.errors import UserError

    with pytest.raises(UserError):
        ev.evaluate_audio(piano[:1000], piano, SR)
    broken = piano.copy()
    broken[100] = np.nan
    with pytest.raises(UserError, match="NaN"):
        ev.evaluate_audio(broken, piano, SR)


# --- the picture --------------------------------------------------------------------------------------------------
def test_spectrogram_png_is_a_valid_truecolour_png(tmp_path, piano):
    panels = [ev.logmel_frames(piano[:SR * 2], SR), ev.logmel_frames(piano[SR * 2:SR * 6], SR)]
    path = ev.write_spectrogram_png(tmp_path / "s.png", panels, max_width=200)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = body
        pos += 12 + length
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (w, depth, colour) == (200, 8, 2)
    assert h == 2 * ev.N_MELS * 3 + 4
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    pixels = raw[:, 1:].reshape(h, w, 3)
    assert pixels[: ev.N_MELS * 3].std() > 10  # a picture, not a flat colour
    assert (pixels[ev.N_MELS * 3: ev.N_MELS * 3 + 4] == 128).all()  # the separator


# --- the command --------------------------------------------------------------------------------------------------
def make_dataset(folder, piano):
    """A real data set folder as `neuralinst prepare` writes it: manifest + int16 [N, 1, T] splits."""
    folder.mkdir()
    chunk = SR  # 1 s chunks
    chunks = (np.clip(piano[: (len(piano) // chunk) * chunk], -1, 1) * 32767).astype(np.int16).reshape(-1, 1, chunk)
    np.save(folder / "test.npy", chunks[0::2])
    np.save(folder / "valid.npy", chunks[1::2])
    np.save(folder / "train.npy", chunks[1::2])
    (folder / "manifest.json").write_text(json.dumps({"sample_rate": SR, "channels": 1, "chunk_samples": chunk}))
    return folder


def run_cli(capsys, *args):
    rc = cli_main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_scores_an_audio_file_against_a_data_set_with_json_and_png(tmp_path, capsys, piano):
    data = make_dataset(tmp_path / "piano", piano)
    take = tmp_path / "take.wav"
    sf.write(str(take), piano[SR // 4:], SR)
    rc, out, err = run_cli(capsys, "--model", take, "--data", data, "--seconds", 3,
                           "--png", tmp_path / "s.png", "--json", tmp_path / "r.json")
    assert rc == 0, err
    for label in ("model", "validation (floor)", "white noise", "pink noise", "silence+dither", "score"):
        assert label in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["baselines"]) == set(ev.BASELINES)
    assert result["score"] < 0.5
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def vrnn_onnx(tmp_path_factory):
    """A real (untrained) VRNN exported by export/ (random weights: not piano)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from export.onnx_export import export_model
    from training.configs import build_model, get_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vrnn") / "model.onnx"
    export_model(build_model(get_config("vrnn-tiny", [])), path)
    return path


def test_cli_scores_a_real_exported_model(tmp_path, capsys, piano, vrnn_onnx):
    """The whole path: export, the live runtime's generate(), the measure."""
    data = make_dataset(tmp_path / "piano", piano)
    rc, out, err = run_cli(capsys, "--model", vrnn_onnx, "--data", data, "--seconds", 2, "--json", tmp_path / "r.json")
    assert rc == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["info"]["kind"] == "vrnn"
    assert np.isfinite(result["score"]) and result["score"] > 0.5  # random weights are not piano


def test_bench_quality_reproduces_the_card_and_flags_a_changed_one(tmp_path, capsys, monkeypatch, piano, vrnn_onnx):
    import shutil

    from benchmarks import common

    shipped = tmp_path / "presets"
    folder = shipped / "vrnn-test"
    folder.mkdir(parents=True)
    shutil.copy(vrnn_onnx, folder / "model.onnx")
    # defaults that set the model's controls: the card and the bench must both render the preset's own sound
    (folder / "preset.toml").write_text('name = "vrnn-test"\n\n[defaults]\ngrain = 0.5\ntemperature = 0.8\n')
    monkeypatch.setenv("NEURALINST_SHIPPED_PRESETS", str(shipped))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user presets shadow it
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    data = make_dataset(tmp_path / "piano", piano)
    # the card's figures, written by `neuralinst eval --card` on the preset by name
    rc, _, err = run_cli(capsys, "--model", "vrnn-test", "--data", data, "--seconds", 2, "--card", folder / "MODEL_CARD.md")
    assert rc == 0, err
    card = (folder / "MODEL_CARD.md").read_text()
    figures = ev.read_card_figures(card)
    assert figures["data"] == str(data) and figures["seconds"] == 2 and "| this model |" in card

    rc = cli_main(["bench", "quality", "--name", "q"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    row = json.loads((tmp_path / "results" / "q.json").read_text())["figures"]["presets"][0]
    assert row["verdict"] == "ok" and abs(row["delta"]) < 1e-3  # the runtime is seeded: the same score again

    figures["score"] += 0.5
    (folder / "MODEL_CARD.md").write_text(f"<!-- {ev.CARD_MARK} {json.dumps(figures)} -->")
    assert cli_main(["bench", "quality", "--name", "q"]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def one_line_error(rc, err):
    assert rc != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("neuralinst eval: ") and "Traceback" not in err, err


def test_cli_missing_data_set_is_one_clean_sentence(tmp_path, capsys, piano):
    take = tmp_path / "take.wav"
    sf.write(str(take), piano, SR)
    rc, _, err = run_cli(capsys, "--model", take, "--data", tmp_path / "nowhere")
    one_line_error(rc, err)
    assert "nowhere" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(capsys, "--model", take, "--data", tmp_path / "empty")
    one_line_error(rc, err)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"sample_rate": SR}))
    rc, _, err = run_cli(capsys, "--model", take, "--data", broken)
    one_line_error(rc, err)
    assert "test split" in err


def test_cli_bad_model_is_one_clean_sentence(tmp_path, capsys, piano):
    data = make_dataset(tmp_path / "piano", piano)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model")
    for model in (garbage, tmp_path / "missing.onnx", "no-such-preset-anywhere", tmp_path / "missing.wav"):
        rc, _, err = run_cli(capsys, "--model", model, "--data", data, "--seconds", 2)
        one_line_error(rc, err)
    rc, _, err = run_cli(capsys, "--model", garbage, "--data", data, "--seconds", 0)
    one_line_error(rc, err)
