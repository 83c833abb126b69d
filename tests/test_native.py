"""The native SampleRNN loop (instrument/native) against the torch model: same logits when teacher-forced, same
samples when sampling with the same noise, over hundreds of chained calls.

The flip rule: inverse-CDF sampling picks level k when cdf[k-1] <= u * total < cdf[k]. The C loop and torch sum in
different orders (float32 rounding ~1e-6), so when u lies within 1e-4 of a CDF boundary the two may pick the two
levels either side of it (adjacent ones, or further apart when the levels between carry less than 1e-4 of the
probability). Such a flip is allowed (then the native state is resynchronised from torch and the comparison goes
on); any other difference fails, and so do more than 2 flips in a run.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from export.native_weights import write_native_weights
from instrument.errors import UserError
from instrument.native import build
from instrument.native.samplernn import NativeSampleRNN
from training.samplernn import CONFIGS, Model

torch.set_num_threads(1)
LSTM_SKIP = dict(frame_sizes=(8,), rnn="lstm", skip_connections=True, mlp_hidden_layers=2, learn_h0=False,
                 quantization="linear")
BOUNDARY = 1e-4


def make(name: str, **overrides) -> Model:
    torch.manual_seed(0)
    m = Model(dataclasses.replace(CONFIGS[name], **overrides)).eval()
    with torch.no_grad():  # a non-trivial initial state, so the test sees it carried over
        for t in m.tiers:
            t.h0.add_(0.1 * torch.randn_like(t.h0))
    return m


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("native")


def exported(model: Model, workdir, tag: str):
    """The model's ONNX file, exported once per tag (a tag always names the same seeded model)."""
    from export.onnx_export import export_model

    path = workdir / f"{tag}.onnx"
    if not path.exists():
        export_model(model, path)
    return path


def native_for(model: Model, workdir, tag: str) -> NativeSampleRNN:
    return NativeSampleRNN(write_native_weights(model, workdir / f"{tag}.npz"))


def test_build_is_idempotent_and_the_library_loads():
    path = build.build(quiet=True)
    mtime = path.stat().st_mtime
    assert build.build(quiet=True) == path and path.stat().st_mtime == mtime  # up to date: not rebuilt
    assert not build.needs_build()


@pytest.mark.parametrize("name,overrides,calls", [
    ("samplernn-tiny", {}, 40), ("samplernn-tiny", LSTM_SKIP, 40), ("samplernn-live", {}, 6)])
def test_teacher_forced_logits_equal_torch(name, overrides, calls, workdir, fixtures_dir):
    import soundfile as sf

    m = make(name, **overrides)
    net = native_for(m, workdir, f"tf-{name}-{len(overrides)}")
    x, _ = sf.read(fixtures_dir / "piano.flac", dtype="float32")
    F = m.block_size
    x = torch.from_numpy(x[16000:16000 + 2 * calls * F].reshape(2, 1, calls * F).copy())
    st_t, st_n = m.initial_state(2), net.initial_state(2)
    for k in st_t:
        assert np.array_equal(st_n[k], st_t[k].numpy())
    gap = 0.0
    with torch.no_grad():
        for k in range(calls):
            block = x[..., k * F:(k + 1) * F]
            lt, st_t = m.step_teacher_forced(block, st_t)
            ln, st_n = net.step_teacher_forced(m.quantize(block[:, 0]).numpy(), st_n)
            gap = max(gap, float(np.abs(ln - lt.numpy()).max()))
    assert gap <= 1e-4
    for k in st_t:
        assert np.abs(st_n[k] - st_t[k].numpy()).max() <= 1e-5, k


def compare_sampling(m: Model, net: NativeSampleRNN, calls: int, seed: int = 1, state_tol: float = 1e-4,
                     boundary_tol: float = BOUNDARY) -> tuple[int, int]:
    """Chained sampled calls at temperatures 0.3 / 1.0 / 1.7 in turn; returns (flips, samples compared)."""
    g = torch.Generator().manual_seed(seed)
    st_t, st_n = m.initial_state(1), net.initial_state(1)
    flips = samples = 0
    with torch.no_grad():
        for k in range(calls):
            temperature = (0.3, 1.0, 1.7)[k % 3]
            controls = m.default_controls(1, g)
            controls["temperature"][:] = temperature
            before = st_t
            audio_t, st_t = m.step(controls, st_t)
            audio_n, st_n = net.step({n: v.numpy() for n, v in controls.items()}, st_n)
            lt, ln = m.quantize(audio_t[0, 0]), m.quantize(torch.from_numpy(audio_n[0, 0]))
            samples += m.block_size
            if torch.equal(lt, ln):
                assert np.abs(audio_n - audio_t.numpy()).max() <= 1e-6
                for n in st_t:
                    assert np.abs(st_n[n] - st_t[n].numpy()).max() <= state_tol, n
                continue
            j = int((lt != ln).nonzero()[0, 0])  # the first differing sample; later ones follow from it
            lo, hi = sorted((int(lt[j]), int(ln[j])))
            logits, _ = m.step_teacher_forced(audio_t, before)
            cdf = torch.cumsum(torch.softmax(logits[0, j] / temperature, -1), -1)
            boundary = float(cdf[lo])
            u = float(controls["noise"][0, j])
            assert abs(u - boundary) < boundary_tol, f"call {k}: u={u} is {abs(u - boundary):.2g} from the boundary"
            # Levels further apart than neighbours only when those between carry (almost) no probability.
            between = float(cdf[hi - 1] - cdf[lo])
            assert between < boundary_tol, f"call {k} sample {j}: levels {lo} vs {hi}, {between:.2g} between"
            flips += 1
            st_n = {n: v.numpy() for n, v in st_t.items()}  # resynchronise and go on
    return flips, samples


def test_sampling_equals_torch_over_240_chained_calls_tiny(workdir):
    m = make("samplernn-tiny")
    flips, samples = compare_sampling(m, native_for(m, workdir, "s-tiny"), calls=240)
    assert flips <= 2 and samples == 240 * 32


def test_sampling_equals_torch_over_60_chained_calls_live(workdir):
    m = make("samplernn-live")  # torch eager is slow at this size: 60 calls (3840 samples) keep the test short
    flips, samples = compare_sampling(m, native_for(m, workdir, "s-live"), calls=60)
    assert flips <= 2 and samples == 60 * 64


def test_sampling_equals_torch_lstm_skip(workdir):
    m = make("samplernn-tiny", **LSTM_SKIP)
    flips, _ = compare_sampling(m, native_for(m, workdir, "s-lstm"), calls=90)
    assert flips <= 2


def test_the_flip_rule_can_fail(workdir):
    """A native loop that samples differently (here: another temperature) is caught, not excused as flips."""
    m = make("samplernn-tiny")
    net = native_for(m, workdir, "s-wrong")
    real = net.step
    net.step = lambda controls, state: real({**controls, "temperature": controls["temperature"] * 1.5}, state)
    with pytest.raises(AssertionError):
        compare_sampling(m, net, calls=30)


def test_hot_path_equals_step_and_step_does_not_mutate(workdir):
    m = make("samplernn-tiny")
    net = native_for(m, workdir, "hot")
    rng = np.random.default_rng(0)
    state = net.initial_state(1)
    frozen = {k: v.copy() for k, v in state.items()}
    net.reset()
    out = np.zeros(net.block_size, np.float32)
    for _ in range(20):
        noise = rng.random((1, net.block_size), dtype=np.float32)
        audio, state = net.step({"temperature": np.array([0.8], np.float32), "noise": noise}, state)
        net.generate_frame(0.8, noise[0], out)
        assert np.array_equal(out, audio[0, 0])
        assert np.array_equal(net.last_levels, m.quantize(torch.from_numpy(out)).numpy())
    for k, v in net.get_state().items():
        assert np.array_equal(v, state[k])
    assert all(np.array_equal(net.initial_state(1)[k], v) for k, v in frozen.items())
    assert net.meta.kind == "samplernn" and net.block_size == net.meta.block_size == 32


def test_bad_weights_files_are_refused_in_one_sentence(workdir):
    (workdir / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a native SampleRNN weights file"):
        NativeSampleRNN(workdir / "junk.npz")
    with pytest.raises(UserError, match="no such native weights file"):
        NativeSampleRNN(workdir / "missing.npz")
    good = np.load(write_native_weights(make("samplernn-tiny"), workdir / "good.npz"))
    arrays = {k: good[k] for k in good.files if k != "mlp.out_w"}
    with open(workdir / "cut.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(UserError, match="lack 'mlp.out_w'"):
        NativeSampleRNN(workdir / "cut.npz")


@pytest.mark.parametrize("overrides", [{}, dict(LSTM_SKIP, h0_random_std=0.5)])
def test_native_runtime_plays_what_the_onnx_runtime_plays(overrides, workdir):
    """Same seed, same controls: NativeRuntimeModel and instrument.model.RuntimeModel give the same samples."""
    from instrument.model import load_model
    from instrument.native.samplernn import load_native_model

    m = make("samplernn-tiny", **overrides)
    tag = f"rt-{len(overrides)}"
    onnx_rt = load_model(exported(m, workdir, tag), device="cpu", threads=1, batch=1)
    native_rt = load_native_model(write_native_weights(m, workdir / f"{tag}.npz"))
    assert native_rt.block_size == onnx_rt.block_size and native_rt.sample_rate == onnx_rt.sample_rate
    onnx_rt.reset(7)
    native_rt.reset(7)
    for name, value in onnx_rt.get_state().items():  # the randomised h0 too
        assert np.array_equal(native_rt.get_state()[name], value), name
    flips = 0
    for k in range(90):
        t = (0.3, 1.0, 1.7)[k % 3]
        onnx_rt.set_control("temperature", t)
        native_rt.set_control("temperature", t)
        a, b = onnx_rt.generate(m.block_size), native_rt.generate(m.block_size)
        assert np.array_equal(onnx_rt.last_controls()["noise"], native_rt.last_controls()["noise"])
        la, lb = m.quantize(torch.from_numpy(a[0])), m.quantize(torch.from_numpy(b[0]))
        if not torch.equal(la, lb):
            j = int((la != lb).nonzero()[0, 0])
            assert abs(int(la[j]) - int(lb[j])) == 1
            flips += 1
            native_rt.set_state(onnx_rt.get_state())
            continue
        assert np.abs(a - b).max() <= 1e-6
    assert flips <= 2
    with pytest.raises(UserError, match="noise drawn by the runtime"):
        native_rt.set_control("noise", 0.5)
    native_rt.set_control("temperature", 99.0)
    assert native_rt.get_control("temperature")[0] == 2.0  # clamped to the control's range


def test_native_runtime_batch_of_two_equals_onnx(workdir):
    from instrument.model import load_model
    from instrument.native.samplernn import load_native_model

    m = make("samplernn-tiny")
    onnx_rt = load_model(exported(m, workdir, "rt-0"), device="cpu", threads=1, batch=2)
    native_rt = load_native_model(write_native_weights(m, workdir / "b2.npz"), batch=2)
    onnx_rt.reset(3)
    native_rt.reset(3)
    a, b = onnx_rt.generate_batch(10 * m.block_size), native_rt.generate_batch(10 * m.block_size)
    assert a.shape == b.shape == (2, 1, 320)
    assert np.array_equal(m.quantize(torch.from_numpy(a)), m.quantize(torch.from_numpy(b)))


def test_out_of_range_state_and_bad_buffers_are_contained(workdir):
    m = make("samplernn-tiny")
    net = native_for(m, workdir, "guard")
    state = net.initial_state(1)
    state["samples"][:] = [1e9, -5.0, float("nan")] * 10 + [3.0, 255.0]  # garbage from outside: clamped, no crash
    audio, new = net.step({"temperature": np.ones(1, np.float32), "noise": np.full((1, 32), 0.5, np.float32)}, state)
    assert np.isfinite(audio).all() and 0 <= new["samples"].min() and new["samples"].max() <= 255
    with pytest.raises(ValueError):
        net.generate_frame(1.0, np.zeros(32, np.float64), np.zeros(32, np.float32))
    with pytest.raises(ValueError):
        net.generate_frame(1.0, np.zeros(32, np.float32), np.zeros(16, np.float32))


def test_native_weights_command_reads_a_checkpoint(workdir, capsys):
    from export.native_weights import main
    from training.checkpoint import save_checkpoint

    m = make("samplernn-tiny")
    run = workdir / "run"
    save_checkpoint(run, 5, m, {}, {"config": m.config_dict()})
    assert main([str(run), "--out", str(workdir / "from-ckpt.npz")]) == 0
    net = NativeSampleRNN(workdir / "from-ckpt.npz")
    direct = native_for(m, workdir, "direct")
    noise = np.random.default_rng(0).random((1, 32), dtype=np.float32)
    controls = {"temperature": np.ones(1, np.float32), "noise": noise}
    a, _ = net.step(controls, net.initial_state(1))
    b, _ = direct.step(controls, direct.initial_state(1))
    assert np.array_equal(a, b) and net.meta.extra.get("checkpoint_step") == 5
    assert main([str(workdir / "nowhere"), "--out", str(workdir / "x.npz")]) != 0  # one sentence, no traceback
    assert "error:" in capsys.readouterr().err


def round_for_storage(m: Model, workdir, storage: str) -> float:
    """The export refuses `m` with `storage` ("half" or "int8") matrices until the model is rounded for it; round
    it and return how far that moved the logits of a test signal."""
    with pytest.raises(UserError, match=f"round_weights_to_{storage}_"):
        write_native_weights(m, workdir / f"unrounded-{storage}.npz", **{storage: True})
    with torch.no_grad():
        x = torch.sin(torch.arange(4 * m.block_size) * 0.05).mul(0.5).reshape(1, 1, -1)
        before, _, _ = m(x)
        getattr(m, f"round_weights_to_{storage}_")()
        after, _, _ = m(x)
    return float((after - before).abs().max())


@pytest.mark.parametrize("name,overrides,calls", [
    ("samplernn-tiny", {}, 90),  # dim 32: the F16C path
    ("samplernn-tiny", dict(dim=36), 30),  # dim 36 (not a multiple of 8): the portable conversion
    ("samplernn-tiny", LSTM_SKIP, 30),
])
def test_float16_weights_play_what_the_rounded_torch_model_plays(name, overrides, calls, workdir):
    m = make(name, **overrides)
    assert round_for_storage(m, workdir, "half") < 1e-2  # rounding moves the logits a little, not the model
    net = NativeSampleRNN(write_native_weights(m, workdir / f"half-{len(overrides)}-{m.config.dim}.npz", half=True))
    assert net.half
    flips, samples = compare_sampling(m, net, calls=calls)
    assert flips <= 2 and samples == calls * m.block_size


@pytest.mark.parametrize("name,overrides,calls", [
    ("samplernn-tiny", {}, 90),  # dim 32: the AVX2 integer path
    ("samplernn-tiny", dict(dim=36), 30),  # dim 36 (not a multiple of 16): the portable loop
    ("samplernn-tiny", LSTM_SKIP, 30),
    ("samplernn-live", {}, 20),
])
def test_int8_weights_play_what_the_rounded_torch_model_plays(name, overrides, calls, workdir):
    m = make(name, **overrides)
    assert round_for_storage(m, workdir, "int8") < 0.1  # the int8 grid moves the logits a little (0.03-0.04)
    tag = f"int8-{name}-{len(overrides)}-{m.config.dim}"
    net = NativeSampleRNN(write_native_weights(m, workdir / f"{tag}.npz", int8=True))
    assert net.int8 and not net.half
    with np.load(workdir / f"{tag}.npz") as f:  # stored as int8 with one scale per row of the loop's layout
        assert f["mlp.out_w"].dtype == np.int8 and f["mlp.out_w.scale"].shape == (m.config.q_levels,)
        assert f["tier0.up_w"].dtype == np.int8 and f["tier0.up_w.scale"].shape == f["tier0.up_w"].shape[:2]
    # The loop rounds each matrix's input vector to 14 bits (instrument/native/samplernn.c, matvec_i8): states
    # agree to ~1e-3 instead of ~1e-5, and a level may flip when u lies within 2e-3 of a CDF boundary.
    flips, samples = compare_sampling(m, net, calls=calls, state_tol=2e-3, boundary_tol=2e-3)
    # Each flip was checked to lie within 2e-3 of a boundary; about 2 * 2e-3 of the draws do (measured: 4 in 2,880).
    assert flips <= max(3, samples // 250) and samples == calls * m.block_size


def test_native_benchmark_times_int8_and_measures_what_each_storage_costs(workdir, tmp_path):
    """`neuralinst bench native` (in a child: it pins itself to one core) with the int8 executor, and the
    storage-cost table on a small checkpoint and data set."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from training.checkpoint import save_checkpoint

    m = make("samplernn-tiny")
    run = tmp_path / "run"
    save_checkpoint(run, 5, m, {}, {"config": m.config_dict()})
    data = tmp_path / "data"
    data.mkdir()
    t = np.arange(2 * 16000)
    chunks = (np.sin(2 * np.pi * 220 * t / 16000) * 8000).astype(np.int16).reshape(2, 1, -1)
    np.save(data / "test.npy", chunks)
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "native"
    done = subprocess.run([sys.executable, "-m", "neuralinst", "bench", "native", "--quick", "--configs",
                           "samplernn-tiny", "--executors", "native,native8", "--name", str(out),
                           "--quality-run", str(run), "--quality-data", str(data), "--quality-seconds", "2"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.with_suffix(".json").read_text())["figures"]
    (row,) = figures["rows"]
    assert row["native8_rtf"] > 0 and row["native8_call_ms"]["p50"] > 0
    cost = figures["storage_cost"]
    assert 0 < cost["float32_bits_per_sample"] < 12 and abs(cost["int8_cost_bits"]) < 0.1  # (random weights)
    assert "int8" in done.stdout and "cost vs float32" in done.stdout


def test_a_checkpoint_recovered_from_a_shipped_graph_plays_the_same_model(workdir):
    """export.recover: a SampleRNN graph (weight norm folded, embedding x input conv folded into tables, h0 in the
    metadata) back to a checkpoint whose export streams the same audio, so a preset whose run is gone can still
    be re-exported with other native weights (samplernn-loud: float16 -> int8)."""
    from export.onnx_export import export_model
    from export.recover import recover_samplernn, save_recovered
    from instrument.model import load_model
    from training.checkpoint import load_model as load_checkpoint

    # Two tiers like the shipped -live config; a q x q embedding, so the tables split back exactly.
    m = make("samplernn-tiny", embedding_size=256, frame_sizes=(8, 2))
    with torch.no_grad():  # trained-like: no two parameters equal (the exporter shares equal constants, e.g. 0 biases)
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.round_weights_to_half_()  # as `export --native-half` shipped it: weight norm folded, every weight named
    shipped = exported(m, workdir, "to-recover")
    model, info = recover_samplernn(shipped)
    save_recovered(model, info, workdir / "recovered-run")
    again, ckpt = load_checkpoint(workdir / "recovered-run")
    assert ckpt["recovered_from"] == str(shipped) and again.config == m.config
    export_model(again, workdir / "recovered.onnx")
    audio = []
    for path in (shipped, workdir / "recovered.onnx"):
        rt = load_model(path, device="cpu", threads=1, batch=1)
        rt.reset(3)
        audio.append(np.asarray(rt.generate(4000)))
    assert np.array_equal(audio[0], audio[1])
    again._fold_weight_norm_()  # and the weights themselves (what the int8 export rounds), name by name
    got = again.state_dict()
    for name, a in m.state_dict().items():
        if not name.startswith(("mlp.embedding", "mlp.input")):  # those two are recovered as their product
            assert torch.allclose(a, got[name], rtol=1e-6, atol=1e-7), name
    unfit = make("samplernn-tiny", frame_sizes=(8, 2))
    unfit.round_weights_to_half_()
    with pytest.raises(UserError, match="not square"):
        recover_samplernn(exported(unfit, workdir, "tiny-default-embedding"))
