"""SampleRNN: configs as in the papers, quantisation, training losses, and the streaming contract proved against the
full-sequence forward pass (teacher forcing) and against onnxruntime."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from instrument.meta import ModelMeta
from training.samplernn import CONFIGS, Model, dequantize, quantize

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def piano(fixtures_dir) -> torch.Tensor:
    x, sr = sf.read(fixtures_dir / "piano.flac", dtype="float32")
    assert sr == 16000 and x.ndim == 1 and len(x) == 8 * 16000
    return torch.from_numpy(x)


def make(name: str, seed: int = 0, **overrides) -> Model:
    torch.manual_seed(seed)
    return Model(dataclasses.replace(CONFIGS[name], **overrides)).eval()


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --- quantisation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["linear", "mu-law"])
def test_quantize_dequantize_round_trip(scheme):
    levels = torch.arange(256)
    assert torch.equal(quantize(dequantize(levels, 256, scheme), 256, scheme), levels)
    x = torch.linspace(-1, 1, 10001)
    y = dequantize(quantize(x, 256, scheme), 256, scheme)
    assert y.min() >= -1 and y.max() <= 1
    if scheme == "linear":
        assert (x - y).abs().max() <= 2 / 256 + 1e-6  # one level
    else:  # mu-law: fine near zero, coarse near full scale
        small = x.abs() < 0.01
        assert (x - y)[small].abs().max() < 3e-4  # levels ~1.7e-4 apart near 0
        assert (x - y).abs().max() < 0.035
    assert quantize(torch.tensor([-5.0, 5.0]), 256, scheme).tolist() == [0, 255]


# --- configs as in the papers ---------------------------------------------------------------------------------
def test_paper_and_dadabots_configs_have_the_published_sizes(capsys):
    with torch.device("meta"):  # sizes only: no memory, no initialisation time
        paper = Model(CONFIGS["samplernn-paper"])
        dada = Model(CONFIGS["samplernn-dadabots"])
    assert [t.frame_size for t in paper.tiers] == [16, 4] and [t.n_frame_samples for t in paper.tiers] == [16, 64]
    for tier in paper.tiers:
        assert len(tier.rnns) == 3 and isinstance(tier.rnns[0], torch.nn.GRU) and tier.rnns[0].hidden_size == 1024
        assert isinstance(tier.h0, torch.nn.Parameter)  # learned initial state
        assert isinstance(tier.upsample, torch.nn.ConvTranspose1d)
    assert paper.mlp.output.out_features == 256 and paper.mlp.input.kernel_size == (16,)
    c = paper.config
    assert (c.q_levels, c.quantization, c.lr, c.batch_size, c.sample_rate, c.chunk_seconds, c.tbptt_samples) == (
        256, "linear", 1e-3, 128, 16000, 8.0, 1024)
    assert paper.tbptt_samples == 1024 and paper.block_size == 64

    assert len(dada.tiers) == 1 and dada.block_size == 16  # 2-tier: one frame tier + the sample level
    tier = dada.tiers[0]
    assert len(tier.rnns) == 5 and isinstance(tier.rnns[0], torch.nn.LSTM) and tier.rnns[0].hidden_size == 1024
    assert len(tier.skips) == 5 and dada.mlp.embedding.embedding_dim == 256
    assert hasattr(tier.expand, "parametrizations")  # weight normalisation
    assert dada.config.quantization == "linear" and dada.config.h0_random_std > 0
    small = make("samplernn-dadabots", dim=32, embedding_size=16)  # same shape of model, small enough to run
    assert set(small.stream_meta().extra["initial_state_noise_std"]) == {"tier0.h", "tier0.c"}
    # randomised h0 at generation: two generators give two different starts
    a = small.initial_state(1, torch.Generator().manual_seed(1))["tier0.h"]
    b = small.initial_state(1, torch.Generator().manual_seed(2))["tier0.h"]
    assert not torch.equal(a, b)
    with capsys.disabled():
        print(f"\n  parameters: samplernn-paper {n_params(paper):,}, samplernn-dadabots {n_params(dada):,}, "
              f"samplernn-live {n_params(make('samplernn-live')):,}")
    d, q = 1024, 256
    gru_layer = 2 * 3 * d * d + 2 * 3 * d
    tier = lambda n, fs: (n * d + 2 * d) + 3 * gru_layer + (d * d * fs + d + d * fs) + 3 * d  # expand, GRUs, up, h0
    mlp = q * q + (d * q * 16 + d) + (d * d + 2 * d) + (d * q + q + q)  # embedding, input conv, hidden, output
    assert n_params(paper) == tier(16, 16) + tier(64, 4) + mlp  # 64.4 M


def test_stream_meta_is_valid_and_matches_initial_state():
    m = make("samplernn-tiny")
    meta = ModelMeta.from_json(m.stream_meta().to_json())
    assert meta.kind == "samplernn" and meta.block_size == 32 and meta.quantization == {"levels": 256, "scheme": "mu-law"}
    assert [c.role for c in meta.controls] == ["temperature", "noise"]
    assert meta.control("noise").shape == [32] and meta.control("noise").distribution == "uniform"
    state = m.initial_state(3)
    assert [s.name for s in meta.state] == list(state)
    for spec in meta.state:
        assert list(state[spec.name].shape) == [3, *spec.shape]
        flat = torch.tensor(meta.extra["initial_state"][spec.name]).reshape(spec.shape)
        assert torch.equal(state[spec.name][1], flat)
    assert torch.equal(m.tiers[0].h0, state["tier0.h"][0])  # learned h0 is the initial state


# --- training -------------------------------------------------------------------------------------------------
def test_losses_are_nll_in_nats_and_bits(piano):
    m = make("samplernn-tiny")
    metrics, state = m.losses(piano[:512].reshape(2, 1, 256))
    assert abs(metrics["loss"].item() - math.log(256)) < 1.0  # untrained: near uniform over 256 levels
    assert torch.allclose(metrics["bits_per_sample"], metrics["loss"] / math.log(2))
    assert all(not v.requires_grad for v in state.values())


def test_tbptt_state_carry_equals_one_long_forward(piano):
    m = make("samplernn-tiny")
    x = piano[16000:16000 + 2 * 1024].reshape(2, 1, 1024)
    with torch.no_grad():
        full, _, full_state = m(x)
        state, pieces = None, []
        for k in range(4):
            logits, _, state = m(x[..., k * 256:(k + 1) * 256], state)
            pieces.append(logits)
    assert (torch.cat(pieces, 1) - full).abs().max() < 1e-4
    for k in full_state:
        assert (state[k] - full_state[k]).abs().max() < 1e-5


def test_tiny_overfits_one_second_of_piano(piano):
    m = make("samplernn-tiny").train()
    x = piano[32000:32000 + 16 * 960].reshape(16, 1, 960)  # about one second, as 16 pieces of 60 ms
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    history = []
    for _ in range(30):
        metrics, _ = m.losses(x)
        opt.zero_grad()
        metrics["loss"].backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        history.append(metrics["loss"].item())
    first, last = np.mean(history[:3]), np.mean(history[-3:])
    print(f"overfit: {first:.2f} -> {last:.2f} nats/sample")
    assert last < first - 1.0, history  # nats per sample


# --- streaming = training forward (teacher forced) ------------------------------------------------------------
def teacher_forced_gap(m: Model, x: torch.Tensor) -> tuple[float, float]:
    """Max |logits| difference between the streaming path and the full forward, and the largest state gap."""
    B, F = x.shape[0], m.block_size
    with torch.no_grad():
        full, _, full_state = m(x)
        state, out = m.initial_state(B), []
        for k in range(x.shape[-1] // F):
            logits, state = m.step_teacher_forced(x[..., k * F:(k + 1) * F], state)
            out.append(logits)
    gap = (torch.cat(out, 1) - full).abs().max().item()
    return gap, max((state[k] - full_state[k]).abs().max().item() for k in state)


def test_teacher_forced_steps_equal_the_training_forward_on_8s_of_piano(piano):
    m = make("samplernn-tiny")
    x = piano.reshape(16, 1, 8000)  # all 8 s, as 16 half-second streams in one batch
    logit_gap, state_gap = teacher_forced_gap(m, x)
    assert logit_gap <= 1e-4 and state_gap <= 1e-5


def test_teacher_forcing_holds_for_lstm_skip_weightnorm_and_live(piano):
    for name, overrides, seconds in [
        ("samplernn-tiny", dict(frame_sizes=(8,), rnn="lstm", skip_connections=True, mlp_hidden_layers=2,
                                learn_h0=False, quantization="linear"), 0.1),
        ("samplernn-live", {}, 0.032),
    ]:
        m = make(name, **overrides)
        with torch.no_grad():  # give the learned h0 a value so the test sees it used
            for t in m.tiers:
                t.h0.add_(0.1 * torch.randn_like(t.h0))
        n = int(seconds * 16000) // m.block_size * m.block_size
        x = piano[40000:40000 + n].reshape(1, 1, n)  # a short stretch of the real piano
        logit_gap, state_gap = teacher_forced_gap(m, x)
        assert logit_gap <= 1e-4 and state_gap <= 1e-5, name


# --- sampling ------------------------------------------------------------------------------------------------
def test_step_samples_by_inverse_cdf():
    m = make("samplernn-tiny")
    state = m.initial_state(2)
    controls = m.default_controls(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        a1, s1 = m.step(controls, state)
        a2, s2 = m.step(controls, state)
        _, logits, _ = m._run_frame(state, forced=m.quantize(a1[:, 0]))
    assert a1.shape == (2, 1, 32) and torch.equal(a1, a2) and torch.equal(s1["samples"], s2["samples"])
    assert a1.abs().max() <= 1.0
    # the first sample of a frame: its level is where u falls in the CDF of softmax(logits / T)
    u = controls["noise"][:, 0]
    for temperature in (0.05, 0.7, 2.0):
        controls["temperature"][:] = temperature
        with torch.no_grad():
            audio, _ = m.step(controls, state)
        level = m.quantize(audio[:, 0, 0])
        cdf = torch.cumsum(torch.softmax(logits[:, 0] / temperature, -1), -1)
        for b in range(2):
            below = cdf[b, level[b] - 1] if level[b] > 0 else 0.0
            assert below - 1e-5 <= u[b] <= cdf[b, level[b]] + 1e-5


def test_onnxruntime_equals_torch_over_chained_steps(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = make("samplernn-tiny")
    meta = m.stream_meta()

    class Step(torch.nn.Module):  # positional I/O in the DESIGN.md order
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args):
            controls = {c.name: a for c, a in zip(meta.controls, args)}
            state = {s.name: a for s, a in zip(meta.state, args[len(meta.controls):])}
            audio, new = self.model.step(controls, state)
            return (audio, *[new[s.name] for s in meta.state])

    state = m.initial_state(2)
    controls = m.default_controls(2, torch.Generator().manual_seed(1))
    args = tuple(controls[c.name] for c in meta.controls) + tuple(state[s.name] for s in meta.state)
    names = meta.input_names() + meta.output_names()
    path = tmp_path / "srnn.onnx"
    torch.onnx.export(Step(m), args, str(path), input_names=meta.input_names(), output_names=meta.output_names(),
                      dynamo=False, opset_version=17, dynamic_axes={n: {0: "batch"} for n in names})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(2)
    torch_state = m.initial_state(2)
    ort_state = {k: v.numpy() for k, v in torch_state.items()}
    mismatched = 0
    for k in range(60):
        controls = m.default_controls(2, g)
        controls["temperature"][:] = (0.3, 1.0, 1.7)[k % 3]
        with torch.no_grad():
            audio, torch_state = m.step(controls, torch_state)
        feeds = {c.name: controls[c.name].numpy() for c in meta.controls}
        feeds.update({"state." + s.name: ort_state[s.name] for s in meta.state})
        out = sess.run(None, feeds)
        ort_state = {s.name: v for s, v in zip(meta.state, out[1:])}
        if not np.array_equal(ort_state["samples"], torch_state["samples"].numpy()):
            mismatched += 1  # an inverse-CDF boundary case: resynchronise and count it
            ort_state = {k: v.numpy() for k, v in torch_state.items()}
            continue
        assert np.abs(out[0] - audio.numpy()).max() < 1e-6
        for s in meta.state:
            assert np.abs(ort_state[s.name] - torch_state[s.name].numpy()).max() < 1e-5
    assert mismatched <= 1
