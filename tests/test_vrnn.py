"""VRNN: sizes of the paper config, teacher-forced streaming == the training forward pass on real audio, an overfit
on one second of real piano, the streaming controls, and onnxruntime == torch for the traced `step`."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from export.onnx_export import export_model
from export.verify import verify_export
from instrument.meta import ModelMeta
from training.vrnn import CONFIGS, Model, parameter_count

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def piano(fixtures_dir) -> torch.Tensor:
    audio, sr = sf.read(fixtures_dir / "piano.flac", dtype="float32")
    assert sr == 16000 and audio.ndim == 1
    return torch.from_numpy(audio)


def tiny_model(piano: torch.Tensor, seed: int = 0) -> Model:
    torch.manual_seed(seed)
    model = Model(CONFIGS["vrnn-tiny"])
    model.set_data_stats(float(piano.mean()), float(piano.std()))
    return model


def test_paper_config_has_the_thesis_sizes():
    c = CONFIGS["vrnn-paper"]
    assert (c.frame, c.h_dim, c.x_feat_dim, c.dec_dim, c.z_feat_dim, c.enc_dim, c.prior_dim, c.z_dim) == (
        200, 2000, 600, 600, 500, 500, 500, 200)
    assert (c.grad_clip, c.lr, c.batch_size, c.sample_rate, c.chunk_seconds) == (0.1, 3e-4, 128, 16000, 0.5)
    model = Model(c)
    assert model.rnn.hidden_size == 2000 and model.rnn.input_size == 600 + 500
    assert model.phi_x[0].in_features == 200 and model.dec.mean.out_features == 200
    assert model.enc.mean.out_features == 200 and model.prior.mean.out_features == 200

    def linear(i, o):
        return i * o + o

    gru = 3 * (1100 * 2000 + 2000 * 2000 + 2 * 2000)
    phi_x = linear(200, 600) + 3 * linear(600, 600)
    phi_z = linear(200, 500)
    enc = linear(600 + 2000, 500) + 3 * linear(500, 500) + 2 * linear(500, 200)
    prior = linear(2000, 500) + 3 * linear(500, 500) + 2 * linear(500, 200)
    dec = linear(500 + 2000, 600) + 3 * linear(600, 600) + 2 * linear(600, 200)
    n = parameter_count(model)
    print(f"vrnn-paper parameters: {n:,}; vrnn-live: {parameter_count(Model(CONFIGS['vrnn-live'])):,}")
    assert n == gru + phi_x + phi_z + enc + prior + dec
    assert CONFIGS["vrnn-live"].h_dim < c.h_dim


def test_data_stats_are_buffers_saved_with_the_checkpoint(piano):
    model = tiny_model(piano)
    sd = model.state_dict()
    assert float(sd["data_mean"]) == pytest.approx(float(piano.mean()))
    assert float(sd["data_std"]) == pytest.approx(float(piano.std()))
    other = Model(CONFIGS["vrnn-tiny"])
    other.load_state_dict(sd)
    assert float(other.data_std) == pytest.approx(float(piano.std()))
    # Normalisation is applied inside: frames have zero mean / unit std in the data set's statistics.
    frames = model._frames(piano[None, None, :16000])
    assert abs(float(frames.std()) - float(piano[:16000].std() / piano.std())) < 1e-4
    with pytest.raises(ValueError):
        model.set_data_stats(0.0, 0.0)


@pytest.mark.parametrize("config_name", ["vrnn-tiny", "vrnn-live", "vrnn-paper"])
def test_teacher_forced_steps_equal_the_training_forward_pass(piano, config_name):
    torch.manual_seed(1)
    model = Model(CONFIGS[config_name]).eval()
    model.set_data_stats(float(piano.mean()), float(piano.std()))
    x = torch.stack([piano[16000:24000], piano[40000:48000]])[:, None]  # two 0.5 s chunks of real piano
    n = 8000 // 200
    eps = torch.randn(2, n, model.config.z_dim)
    with torch.no_grad():
        full, full_state = model.forward_sequence(x, eps=eps)
        state = model.initial_state(2)
        steps = []
        for t in range(n):
            out, state = model.step_teacher_forced(x[..., t * 200:(t + 1) * 200], state, eps=eps[:, t])
            steps.append(out)
    for key in ("prior_mean", "prior_std", "enc_mean", "enc_std", "dec_mean", "dec_std"):
        stepped = torch.stack([s[key] for s in steps], dim=1)
        assert stepped.shape == full[key].shape
        assert torch.allclose(stepped, full[key], atol=1e-4, rtol=0), key
    assert torch.allclose(state["h"], full_state["h"], atol=1e-4, rtol=0)
    assert full["dec_mean"].std() > 0  # not a degenerate comparison


def test_tiny_model_overfits_one_second_of_piano(piano):
    model = tiny_model(piano)
    c = model.config
    x = piano[:16000].reshape(2, 1, 8000)  # one second as two 0.5 s chunks
    opt = torch.optim.Adam(model.parameters(), lr=c.lr, betas=c.betas)
    history = []
    for _ in range(60):
        metrics, _ = model.losses(x)
        opt.zero_grad()
        metrics["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        opt.step()
        history.append({k: float(v.detach()) for k, v in metrics.items()})
    print("loss", history[0]["loss"], "->", history[-1]["loss"], "mse", history[0]["mse"], "->", history[-1]["mse"])
    assert all(np.isfinite(h["loss"]) for h in history)
    first, last = history[0], np.mean([h["loss"] for h in history[-5:]])
    assert last < first["loss"] - 0.5  # nats per sample: a clear fall, not noise
    assert history[-1]["mse"] < 0.5 * first["mse"]
    assert abs(history[-1]["loss"] - history[-1]["kld"] - history[-1]["nll"]) < 1e-4


def test_step_shapes_controls_and_temperature(piano):
    model = tiny_model(piano).eval()
    meta = model.stream_meta()
    meta.validate()
    assert ModelMeta.from_json(meta.to_json()).block_size == 200
    assert meta.input_names() == ["temperature", "z_offset", "grain", "eps_z", "eps_x", "state.h"]
    assert meta.output_names() == ["audio", "next_state.h"]
    assert {c.name: c.role for c in meta.controls} == {
        "temperature": "temperature", "z_offset": "latent_offset", "grain": "grain", "eps_z": "noise",
        "eps_x": "noise"}
    g = torch.Generator().manual_seed(0)
    controls = model.default_controls(3, g)
    state = model.initial_state(3)
    with torch.no_grad():
        audio, nxt = model.step(controls, state)
        assert audio.shape == (3, 1, 200) and nxt["h"].shape == (3, model.config.h_dim)
        assert float(audio.abs().max()) <= 1.0
        assert not torch.equal(nxt["h"], state["h"])
        # Temperature 0 plays the means: the noise no longer matters.
        cold = dict(controls, temperature=torch.zeros(3))
        a0, _ = model.step(cold, state)
        a1, _ = model.step(dict(cold, eps_z=torch.randn(3, 8), eps_x=torch.randn(3, 200)), state)
        assert torch.equal(a0, a1)
        # At temperature 1, eps_z changes what is played; eps_x changes the frame fed back (the next state) but not
        # the decoder mean that is played (play_mean, as in the thesis).
        a2, _ = model.step(dict(controls, eps_z=torch.randn(3, 8)), state)
        assert not torch.allclose(a2, audio)
        a3, s3 = model.step(dict(controls, eps_x=torch.randn(3, 200)), state)
        assert torch.equal(a3, audio) and not torch.allclose(s3["h"], nxt["h"])
        # The latent offset moves z, hence the sound.
        a4, _ = model.step(dict(cold, z_offset=torch.full((3, 8), 2.0)), state)
        assert not torch.allclose(a4, a0)
        # grain 1 plays the drawn frame itself: the same as the mean at temperature 0, noisier at 1; grain 0.5 is
        # halfway between the two, sample for sample (before the clip to [-1, 1]); the next state never changes.
        a5, s5 = model.step(dict(controls, grain=torch.ones(3)), state)
        assert torch.equal(s5["h"], nxt["h"]) and not torch.allclose(a5, audio)
        assert torch.equal(model.step(dict(cold, grain=torch.ones(3)), state)[0], a0)
        half, s6 = model.step(dict(controls, grain=torch.full((3,), 0.5)), state)
        inside = (a5.abs() < 0.999) & (audio.abs() < 0.999)
        assert torch.allclose(half[inside], ((audio + a5) / 2)[inside], atol=1e-5) and torch.equal(s6["h"], nxt["h"])
        # play_mean=False only changes grain's default (to 1): without a grain input it plays the drawn frame.
        drawn = Model(dataclasses.replace(model.config, play_mean=False)).eval()
        drawn.load_state_dict(model.state_dict())
        assert drawn.stream_meta().control("grain").default == 1.0
        no_grain = {k: v for k, v in controls.items() if k != "grain"}
        assert torch.equal(drawn.step(no_grain, state)[0], a5)
    clip = model.generate(0.1, batch=2, seed=3)
    assert clip.shape == (2, 1, 1600) and torch.isfinite(clip).all()
    assert torch.equal(clip, model.generate(0.1, batch=2, seed=3))


def test_k_frames_per_step_equal_k_single_steps(piano):
    one = tiny_model(piano).eval()
    four = Model(dataclasses.replace(one.config, frames_per_step=4)).eval()
    four.load_state_dict(one.state_dict())
    assert four.stream_meta().block_size == 800
    controls = four.default_controls(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        audio4, s4 = four.step(controls, four.initial_state(2))
        state, parts = one.initial_state(2), []
        for i in range(4):
            c = {"temperature": controls["temperature"], "z_offset": controls["z_offset"],
                 "eps_z": controls["eps_z"][:, i], "eps_x": controls["eps_x"][:, i * 200:(i + 1) * 200]}
            a, state = one.step(c, state)
            parts.append(a)
    assert torch.allclose(audio4, torch.cat(parts, dim=-1), atol=1e-6)
    assert torch.allclose(s4["h"], state["h"], atol=1e-6)


def test_exports_through_the_pipeline_and_onnxruntime_matches_torch(piano, tmp_path):
    """export/onnx_export.py (the only torch -> ONNX bridge), then export/verify.py: onnxruntime through the live
    runtime vs torch, closed loop, each side feeding back its own state, batch 2."""
    model = tiny_model(piano).eval()
    result = export_model(model, tmp_path / "vrnn.onnx")
    assert result.meta.input_names() == ["temperature", "z_offset", "grain", "eps_z", "eps_x", "state.h"]
    assert result.meta.output_names() == ["audio", "next_state.h"]
    assert result.meta.extra["data_std"] == pytest.approx(float(piano.std()))
    report = verify_export(model, result.path, calls=40, batch=2)
    assert report.passed, report.summary()
    assert report.max_abs_diff <= 1e-4
