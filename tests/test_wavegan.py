"""WaveGAN: sizes of the paper configs (1 s and the thesis's 4 s), phase shuffle, stereo, WGAN-GP on one second of
real piano (the critic learns to separate real from generated; the generator then moves towards the real side),
the stateless streaming step, and onnxruntime == torch."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from export.onnx_export import export_model
from export.verify import verify_export
from instrument.model import load_model
from training.wavegan import CONFIGS, Model, parameter_count, phase_shuffle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def piano_clips(fixtures_dir) -> torch.Tensor:
    """One second of real piano cut into overlapping 4096-sample clips [12, 1, 4096] (the tiny config's length)."""
    audio, sr = sf.read(fixtures_dir / "piano.flac", dtype="float32")
    assert sr == 16000
    second = torch.from_numpy(audio[:16000])
    return torch.stack([second[i:i + 4096] for i in range(0, 16000 - 4096 + 1, 1024)])[:, None]


def conv_params(c_in, c_out, k=25):
    return c_in * c_out * k + c_out


@pytest.mark.parametrize("name, length, layers, top", [("wavegan-paper", 16384, 5, 16), ("wavegan-paper-4s", 65536, 6, 32)])
def test_paper_configs_have_the_published_sizes(name, length, layers, top):
    c = CONFIGS[name]
    assert (c.d, c.batch_size, c.lr, c.betas, c.latent_dim, c.phase_shuffle, c.n_critic, c.gp_weight) == (
        64, 64, 1e-4, (0.5, 0.9), 100, 2, 5, 10.0)
    assert c.slice_len == length and c.n_layers == layers and round(c.chunk_seconds * c.sample_rate) == length
    with torch.device("meta"):  # sizes and shapes without allocating 140 M parameters
        model = Model(c)
        audio, state = model.step({"z": torch.zeros(2, 100)}, {})
        score = model.critic(audio)
    assert audio.shape == (2, 1, length) and state == {} and score.shape == (2,)
    chans = [64 * top // 2 ** i for i in range(layers)] + [1]  # 1024 (or 2048) ... 64, 1
    g = 100 * 16 * 64 * top + 16 * 64 * top + sum(conv_params(chans[i], chans[i + 1]) for i in range(layers))
    d = sum(conv_params(chans[i + 1], chans[i]) for i in range(layers)) + 16 * 64 * top + 1
    print(f"{name}: generator {parameter_count(model.generator):,}, critic {parameter_count(model.critic):,}")
    assert parameter_count(model.generator) == g and parameter_count(model.critic) == d
    assert model.generator.dense.out_features == 16 * 64 * top  # 16d x 16 (1 s); "512d" x 16 in the 4 s variant


def test_live_config_is_smaller_and_one_second():
    c = CONFIGS["wavegan-live"]
    assert c.slice_len == 16384 and c.d < CONFIGS["wavegan-paper"].d


def test_phase_shuffle_shifts_with_reflection():
    x = torch.arange(10.0).repeat(3, 2, 1)  # [3, 2, 10]
    shifted = phase_shuffle(x, 2, shifts=torch.tensor([2, -2, 0]))
    assert shifted.shape == x.shape
    assert shifted[0, 0].tolist() == [2, 1, 0, 1, 2, 3, 4, 5, 6, 7]  # right by 2, reflected at the start
    assert shifted[1, 1].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 8, 7]  # left by 2, reflected at the end
    assert torch.equal(shifted[2], x[2])
    # Random shifts: every example is x shifted by one integer in [-2, 2], the same for all its channels,
    # and over many draws every shift in [-2, 2] occurs.
    torch.manual_seed(0)
    x = torch.randn(400, 3, 50)
    y = phase_shuffle(x, 2)
    seen = set()
    for b in range(400):
        matches = [s for s in range(-2, 3) if torch.equal(y[b], phase_shuffle(x[b:b + 1], 2, torch.tensor([s]))[0])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {-2, -1, 0, 1, 2}
    assert torch.equal(phase_shuffle(x, 0), x)


def test_stereo_and_4s_shapes():
    stereo = Model(dataclasses.replace(CONFIGS["wavegan-tiny"], channels=2))
    with torch.no_grad():
        audio, _ = stereo.step({"z": stereo.sample_latent(3)}, {})
        assert audio.shape == (3, 2, 4096)
        assert stereo.critic(audio).shape == (3,)
    assert stereo.stream_meta().channels == 2
    long = Model(dataclasses.replace(CONFIGS["wavegan-paper-4s"], d=2))  # the 4 s topology at a tiny width
    with torch.no_grad():
        audio, _ = long.step({"z": long.sample_latent(1)}, {})
    assert audio.shape == (1, 1, 65536) and len(long.generator.upconvs) == 6
    with pytest.raises(ValueError):
        dataclasses.replace(CONFIGS["wavegan-tiny"], slice_len=5000).n_layers


def test_wgan_gp_on_one_second_of_piano(piano_clips):
    torch.manual_seed(0)
    model = Model(CONFIGS["wavegan-tiny"])
    c = model.config
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=c.lr, betas=c.betas)
    opt_c = torch.optim.Adam(model.critic.parameters(), lr=c.lr, betas=c.betas)
    history = []
    for _ in range(12):
        for _ in range(c.n_critic):
            metrics = model.critic_losses(piano_clips[torch.randint(0, len(piano_clips), (8,))])
            opt_c.zero_grad()
            metrics["loss"].backward()
            opt_c.step()
            history.append({k: float(v.detach()) for k, v in metrics.items()})
        g = model.generator_losses(8)
        opt_g.zero_grad()
        g["loss"].backward()
        opt_g.step()
    first, last = history[0], history[-1]
    print("wasserstein", first["wasserstein"], "->", last["wasserstein"], "gp", last["gp"])
    assert all(np.isfinite(h["gp"]) and np.isfinite(h["loss"]) for h in history)
    assert abs(last["loss"] - (-last["wasserstein"] + c.gp_weight * last["gp"])) < 1e-3
    assert abs(first["wasserstein"]) < 1.0 and np.mean([h["wasserstein"] for h in history[-5:]]) > 5.0
    # The critic separates real from generated clearly: every real clip scores above every fresh fake.
    z = model.sample_latent(16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(2)
        real_scores = model.critic(piano_clips)
        fake_scores = model.critic(model.generator(z))
    assert real_scores.min() > fake_scores.max()
    # Generator steps against that critic raise the score of its clips (for a fixed z and phase shuffle).
    for _ in range(3):
        g = model.generator_losses(16)
        opt_g.zero_grad()
        g["loss"].backward()
        opt_g.step()
    with torch.no_grad():
        torch.manual_seed(2)
        moved = model.critic(model.generator(z))
    assert moved.mean() > fake_scores.mean() + 0.1 * (real_scores.mean() - fake_scores.mean())


def test_stream_meta_step_and_generate():
    torch.manual_seed(0)
    model = Model(CONFIGS["wavegan-tiny"]).eval()
    meta = model.stream_meta()
    meta.validate()
    assert meta.input_names() == ["z"] and meta.output_names() == ["audio"] and meta.block_size == 4096
    assert model.initial_state(4) == {}
    (z_spec,) = meta.controls
    assert (z_spec.role, z_spec.shape, z_spec.minimum, z_spec.maximum) == ("latent", [100], -1.0, 1.0)
    z = model.sample_latent(1000)
    assert z.min() >= -1 and z.max() <= 1 and z.min() < -0.99 and z.max() > 0.99
    clips = model.generate(3 * 4096 / 16000 - 0.01, batch=2, seed=7)
    assert clips.shape == (2, 1, 3 * 4096 - 160)
    assert float(clips.abs().max()) <= 1.0
    # Each clip comes from a fresh z, drawn from the seeded generator in order.
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        first, _ = model.step({"z": model.sample_latent(2, g)}, {})
        second, _ = model.step({"z": model.sample_latent(2, g)}, {})
    assert torch.allclose(clips[..., :4096], first) and torch.allclose(clips[..., 4096:8192], second)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("channels", [1, 2])
def test_exports_through_the_pipeline_and_onnxruntime_matches_torch(tmp_path, channels):
    """export/onnx_export.py, then export/verify.py (onnxruntime through the live runtime vs torch, batch 2)."""
    torch.manual_seed(0)
    model = Model(dataclasses.replace(CONFIGS["wavegan-tiny"], channels=channels)).eval()
    result = export_model(model, tmp_path / "wavegan.onnx")
    assert result.meta.input_names() == ["z"] and result.meta.output_names() == ["audio"]
    report = verify_export(model, result.path, calls=3, batch=2)
    assert report.passed, report.summary()
    assert report.max_abs_diff <= 1e-4
    runtime = load_model(result.path, device="cpu", threads=1, batch=1)
    assert runtime.step().shape == (1, channels, 4096)
