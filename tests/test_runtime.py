"""The runtime model contract (instrument/model.py) and offline render (instrument/render.py)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from export.onnx_export import export_model
from instrument.errors import UserError
from instrument.model import load_model
from toy_models import ToyGenerator, ToyGRU, ToyQuantised

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gru_path(tmp_path_factory):
    torch.manual_seed(0)
    return export_model(ToyGRU(), tmp_path_factory.mktemp("rt") / "gru.onnx").path


@pytest.fixture(scope="module")
def generator_path(tmp_path_factory):
    torch.manual_seed(0)
    return export_model(ToyGenerator(), tmp_path_factory.mktemp("rt") / "gen.onnx").path


def test_generate_hides_the_block_size(gru_path):
    model = load_model(gru_path, device="cpu")
    model.reset(5)
    whole = model.generate(1000)
    model.reset(5)
    parts = np.concatenate([model.generate(1), model.generate(999)], axis=-1)
    assert whole.shape == (1, 1000) and whole.dtype == np.float32
    np.testing.assert_array_equal(parts, whole)
    model.reset(5)
    ragged = np.concatenate([model.generate(n) for n in (7, 16, 1, 33, 0, 943)], axis=-1)
    np.testing.assert_array_equal(ragged, whole)


def test_same_seed_same_audio_other_seed_other_audio(gru_path):
    model = load_model(gru_path, device="cpu")
    model.reset(1)
    a = model.generate(500)
    model.reset(1)
    b = model.generate(500)
    model.reset(2)
    c = model.generate(500)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    other = load_model(gru_path, device="cpu")  # a second instance gives the same audio for the same seed
    other.reset(1)
    np.testing.assert_array_equal(other.generate(500), a)


def test_audio_matches_torch_generate_structure(gru_path):
    """generate() continues the stream: n blocks of generate equal n step() calls after the same reset."""
    model = load_model(gru_path, device="cpu")
    model.reset(3)
    blocks = np.concatenate([model.step()[0] for _ in range(10)], axis=-1)
    model.reset(3)
    np.testing.assert_array_equal(model.generate(160), blocks)


def test_controls_change_audio_and_are_clamped(gru_path):
    model = load_model(gru_path, device="cpu")
    model.reset(0)
    normal = model.generate(256)
    model.set_control("temperature", 0.0)
    model.reset(0)
    cold = model.generate(256)
    assert np.abs(normal - cold).max() > 1e-3
    model.set_control("temperature", 99.0)
    assert model.get_control("temperature")[0] == 2.0  # clamped to the metadata's range
    with pytest.raises(UserError, match="no control"):
        model.set_control("nope", 1.0)
    with pytest.raises(UserError, match="noise"):
        model.set_control("eps", 0.0)
    with pytest.raises(UserError, match="shape"):
        model.set_control("temperature", [1.0, 2.0, 3.0])


def test_state_snapshot_restores_the_stream(gru_path):
    model = load_model(gru_path, device="cpu")
    model.reset(4)
    model.generate(160)
    snapshot = model.get_state()
    rng_state = model._rng.bit_generator.state
    after = model.generate(160)
    model.set_state(snapshot)
    model._rng.bit_generator.state = rng_state
    np.testing.assert_array_equal(model.generate(160), after)


def test_batch_streams_are_independent_items(gru_path):
    model = load_model(gru_path, device="cpu", batch=3)
    model.set_control("temperature", np.array([[0.5], [1.0], [1.5]]).reshape(3))
    model.reset(0)
    out = model.generate_batch(64)
    assert out.shape == (3, 1, 64)
    assert np.abs(out[0] - out[2]).max() > 1e-4


def test_stateless_generator_latent_control(generator_path):
    model = load_model(generator_path, device="cpu")
    assert model.meta.latent_size == 8 and model.channels == 2
    model.set_control("z", np.full(8, 0.5))
    a = model.step()
    model.set_control("z", np.full(8, -0.5))
    b = model.step()
    assert a.shape == (1, 2, 64)
    assert np.abs(a - b).max() > 1e-3
    model.set_control("z", np.full(8, 0.5))
    np.testing.assert_array_equal(model.step(), a)  # no state: the same latent gives the same clip


def test_threads_batch_and_device_are_checked(gru_path):
    assert load_model(gru_path, device="cpu", threads=2).providers == ["CPUExecutionProvider"]
    with pytest.raises(UserError, match="batch"):
        load_model(gru_path, batch=0)
    with pytest.raises(UserError, match="device"):
        load_model(gru_path, device="tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UserError, match="CUDA"):
            load_model(gru_path, device="cuda")


def _render(model_path, out, *extra, env=None):
    return subprocess.run(
        [sys.executable, "-m", "neuralinst", "render", "--model", str(model_path), "--seconds", "0.5",
         "--out", str(out), *extra],
        capture_output=True, text=True, timeout=120, env=env,
    )


def test_render_is_byte_identical_for_a_seed(tmp_path):
    torch.manual_seed(0)
    path = export_model(ToyQuantised(), tmp_path / "q.onnx").path
    runs = [_render(path, tmp_path / f"{name}.wav", "--seed", seed)
            for name, seed in (("a", "11"), ("b", "11"), ("c", "12"))]
    for r in runs:
        assert r.returncode == 0, r.stderr
    a, b, c = ((tmp_path / f"{n}.wav").read_bytes() for n in "abc")
    assert a == b
    assert a != c
    audio, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == 16000 and audio.shape == (8000,)
    assert np.abs(audio).max() > 0.1


def test_render_refuses_bad_requests_with_one_sentence(tmp_path, gru_path):
    missing = _render(tmp_path / "missing.onnx", tmp_path / "x.wav")
    assert missing.returncode == 1 and "no such model file" in missing.stderr
    assert "Traceback" not in missing.stderr
    hot = _render(gru_path, tmp_path / "x.wav", "--temperature", "9")
    assert hot.returncode == 1 and "outside the model's range" in hot.stderr


def test_randomised_initial_state_is_seeded(tmp_path):
    class RandomH0(ToyGRU):
        def stream_meta(self):
            meta = super().stream_meta()
            meta.extra["initial_state_noise_std"] = {"h": 0.5}
            return meta

    torch.manual_seed(0)
    model = RandomH0()
    path = export_model(model, tmp_path / "h0.onnx").path
    runtime = load_model(path, device="cpu")
    runtime.reset(1)
    a = runtime.get_state()["h"]
    runtime.reset(1)
    np.testing.assert_array_equal(runtime.get_state()["h"], a)
    runtime.reset(2)
    b = runtime.get_state()["h"]
    base = model.h0.detach().numpy()
    assert 0.2 < np.std(a - base) < 1.0 and np.abs(a - b).max() > 0.1
    from export.verify import verify_export
    assert verify_export(model, path, calls=20).passed  # torch starts from the runtime's seeded state


def test_a_blown_up_model_recovers_instead_of_going_silent(tmp_path):
    """State that doubles every call overflows to inf: the runtime silences that block and restarts the state."""
    from instrument.meta import ModelMeta, StateSpec
    from training.streaming import StreamingModel

    class Doubling(StreamingModel):
        kind = "vrnn"

        def stream_meta(self):
            return ModelMeta(kind="vrnn", sample_rate=16000, channels=1, block_size=4, controls=[],
                             state=[StateSpec("x", [1])])

        def initial_state(self, batch):
            return {"x": torch.ones(batch, 1)}

        def step(self, controls, state):
            x = state["x"] * 16.0
            return (x / x.abs().clamp(min=1.0) * 0.5 + x * 0).expand(-1, 4)[:, None, :], {"x": x}

    from toy_models import ToyConfig

    path = export_model(Doubling(ToyConfig(name="doubling")), tmp_path / "doubling.onnx").path
    model = load_model(path, device="cpu")
    audio = model.generate(4 * 80)  # 16^32 overflows float32 after 32 calls, then inf * 0 = nan
    assert np.isfinite(audio).all()
    assert model.recoveries >= 1
    assert np.abs(audio).max() == 0.5  # it plays again after the restart


def test_render_of_a_clip_generator_draws_a_latent_per_clip(generator_path):
    from instrument.render import render

    model = load_model(generator_path, device="cpu")
    audio = render(model, seconds=64 * 4 / 16000, seed=3)
    clips = audio.reshape(2, 4, 64)
    assert np.abs(clips[:, 0] - clips[:, 1]).max() > 1e-3  # not one clip repeated
    np.testing.assert_array_equal(render(model, seconds=64 * 4 / 16000, seed=3), audio)


def test_render_by_preset_name_plays_the_preset_defaults(tmp_path):
    import os
    import shutil

    torch.manual_seed(0)
    path = export_model(ToyQuantised(), tmp_path / "q.onnx").path
    folder = tmp_path / "shipped" / "toy-q"
    folder.mkdir(parents=True)
    shutil.copy(path, folder / "model.onnx")
    (folder / "preset.toml").write_text('kind = "samplernn"\nmode = "stream"\n[defaults]\ntemperature = 0.5\n')
    env = dict(os.environ, NEURALINST_SHIPPED_PRESETS=str(tmp_path / "shipped"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    by_name = _render("toy-q", tmp_path / "name.wav", env=env)
    assert by_name.returncode == 0, by_name.stderr
    by_path = _render(path, tmp_path / "path.wav", "--temperature", "0.5")
    plain = _render(path, tmp_path / "plain.wav")
    assert (tmp_path / "name.wav").read_bytes() == (tmp_path / "path.wav").read_bytes()
    assert (tmp_path / "name.wav").read_bytes() != (tmp_path / "plain.wav").read_bytes()
    assert by_path.returncode == plain.returncode == 0


def test_a_graph_reports_its_backend_and_auto_says_why_not_native(gru_path):
    model = load_model(gru_path, device="cpu")  # auto: no native weights beside it, so the graph plays
    assert model.backend == "onnx" and "no native weights beside it" in model.backend_note
    assert load_model(gru_path, device="cpu", backend="onnx").backend_note is None
    with pytest.raises(UserError, match="unknown backend"):
        load_model(gru_path, backend="tensorrt")
