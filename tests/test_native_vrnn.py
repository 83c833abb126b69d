"""The native VRNN step (instrument/native/vrnn.c) against the torch model, and its path through export and runtime.

float32 products: the C step computes what torch computes (to float32 rounding), call after call, closed loop.
int8 products: the model is first rounded onto the int8 row grid (export/native_weights.round_vrnn_to_int8_), so
torch, the ONNX graph and the C step play one model; the C step then differs only by rounding each product's
input to 14 bits, which each call's comparison from torch's own state bounds (a VRNN's recurrence would carry any
difference on: a closed loop of a chaotic system measures drift, not arithmetic).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from export.native_weights import round_vrnn_to_int8_, vrnn_native_arrays, vrnn_products, vrnn_sensitivity
from export.onnx_export import prepare_meta
from instrument.errors import UserError
from instrument.native.vrnn import NativeVRNN, load_native_model, pack_tiles
from training.vrnn import CONFIGS, Model

torch.set_num_threads(1)


def make(seed: int = 0, **overrides) -> Model:
    torch.manual_seed(seed)
    m = Model(dataclasses.replace(CONFIGS["vrnn-tiny"], **overrides)).eval()
    m.set_data_stats(0.01, 0.2)  # not the identity: the (de)normalisation is part of what is checked
    return m


def native(m: Model, path) -> NativeVRNN:
    with open(path, "wb") as f:
        np.savez(f, **vrnn_native_arrays(m, prepare_meta(m, None).to_json()))
    return NativeVRNN(path)


def controls(m: Model, batch: int, rng: torch.Generator) -> dict[str, torch.Tensor]:
    c, k = m.config, m.config.frames_per_step
    return {"temperature": 0.5 + torch.rand(batch, generator=rng),
            "z_offset": torch.rand(batch, c.z_dim, generator=rng) * 2 - 1,
            "grain": torch.rand(batch, generator=rng),
            "eps_z": torch.randn(batch, *((k, c.z_dim) if k > 1 else (c.z_dim,)), generator=rng),
            "eps_x": torch.randn(batch, c.frame * k, generator=rng)}


def compare(m: Model, net: NativeVRNN, calls: int, batch: int, resync: bool) -> tuple[float, float]:
    """Max |audio| and |state| difference over `calls` calls (closed loop, or from torch's state each call)."""
    rng = torch.Generator().manual_seed(1)
    st_t = m.initial_state(batch)
    st_n = {k: v.numpy().copy() for k, v in st_t.items()}
    worst_audio = worst_state = 0.0
    for _ in range(calls):
        ctrl = controls(m, batch, rng)
        with torch.no_grad():
            a_t, st_t = m.step(ctrl, st_t)
        a_n, st_n = net.step({k: v.numpy() for k, v in ctrl.items()}, st_n)
        assert a_n.shape == tuple(a_t.shape) and np.isfinite(a_n).all()
        worst_audio = max(worst_audio, float(np.abs(a_n - a_t.numpy()).max()))
        worst_state = max(worst_state, float(np.abs(st_n["h"] - st_t["h"].numpy()).max()))
        if resync:
            st_n = {"h": st_t["h"].numpy().copy()}
    return worst_audio, worst_state


@pytest.mark.parametrize("overrides", [{}, dict(frames_per_step=3, play_mean=False, mlp_layers=3)])
def test_float32_step_equals_torch_closed_loop(overrides, tmp_path):
    m = make(**overrides)
    net = native(m, tmp_path / "f32.npz")
    assert net.int8_products == 0
    audio, state = compare(m, net, calls=60, batch=2, resync=False)
    assert audio < 1e-5 and state < 1e-5


def test_int8_rounded_model_plays_the_same_in_torch_and_c(tmp_path):
    m = make()
    reference = make()
    solo = round_vrnn_to_int8_(m, keep_error=1.0, min_weights=0)  # every product
    assert set(solo) == set(vrnn_products(m)) and all(e is not None for e in solo.values())
    net = native(m, tmp_path / "i8.npz")
    assert net.int8_products == len(solo)
    audio, state = compare(m, net, calls=40, batch=1, resync=True)
    assert audio < 1e-3 and state < 2e-3
    # and the rounding itself changed the model (the test would pass vacuously otherwise)
    moved = max(float((a - b).abs().max()) for (a, _), (b, _) in zip(vrnn_products(m).values(),
                                                                     vrnn_products(reference).values()))
    assert moved > 1e-4


def test_the_sensitivity_rule_keeps_what_it_measures_as_audible():
    m = make()
    solo = vrnn_sensitivity(m, calls=8, min_weights=1000)
    assert len(solo) >= 4 and all(e >= 0 for e in solo.values())
    small = {n for n, (w, _) in vrnn_products(m).items() if w.numel() < 1000}
    assert small and not small & set(solo)  # too small to be worth it: not measured, stays float32
    threshold = sorted(solo.values())[len(solo) // 2]
    result = round_vrnn_to_int8_(m, keep_error=threshold, min_weights=1000)
    arrays = vrnn_native_arrays(m, prepare_meta(m, None).to_json())
    for name, err in result.items():
        rounded = f"{name}.scale" in arrays
        assert rounded == (err is not None and err <= threshold), name


def test_packing_pads_to_whole_tiles():
    q = np.arange(5 * 20, dtype=np.int64).reshape(5, 20).astype(np.int8)
    tiles = pack_tiles(q)
    assert tiles.shape == (2, 2, 4, 16)
    assert np.array_equal(tiles[0, 0, 1, :], q[1, :16]) and np.array_equal(tiles[1, 1, 0, :4], q[4, 16:])
    assert not tiles[1, :, 1:].any() and not tiles[:, 1, :, 4:].any()  # padding rows and columns are zero


def test_export_writes_verified_native_weights_that_the_runtime_prefers(tmp_path, capsys):
    from export.cli import add_arguments, run
    from instrument.model import load_model
    from training.checkpoint import save_checkpoint
    import argparse

    m = make()
    save_checkpoint(tmp_path / "run", 7, m, {}, {"config": m.config_dict()})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "vrnn.onnx"
    assert run(parser.parse_args([str(tmp_path / "run"), "--out", str(out), "--native-int8", "--keep-error", "1",
                                  "--min-weights", "0", "--verify-calls", "20", "--native-verify-calls", "40"])) == 0
    printed = capsys.readouterr().out
    assert "native verify passed" in printed and "kept float32: none" in printed
    auto = load_model(out, device="cpu")
    graph = load_model(out, device="cpu", backend="onnx")
    assert auto.backend == "native" and graph.backend == "onnx"
    for rt in (auto, graph):
        rt.reset(5)
        rt.set_control("z_offset", 0.5)
    a, b = auto.generate(3 * 200), graph.generate(3 * 200)  # same seed: the same noise, drawn in the same order
    for name in ("eps_z", "eps_x"):
        assert np.array_equal(auto.last_controls()[name], graph.last_controls()[name])
    assert np.abs(a - b).max() < 1e-3 and np.abs(a).max() > 0
    # batch 2 through the dict-in/dict-out step
    two = load_model(out, device="cpu", batch=2)
    assert two.backend == "native" and two.generate_batch(400).shape == (2, 1, 400)
    with pytest.raises(UserError, match="not both"):
        run(parser.parse_args([str(tmp_path / "run"), "--out", str(out), "--native-int8", "--weights", "int8"]))
    # --native-half is SampleRNN's alone
    with pytest.raises(UserError, match="--native-half applies to SampleRNN"):
        run(parser.parse_args([str(tmp_path / "run"), "--out", str(out), "--native-half"]))


def test_damaged_or_foreign_native_weights_are_refused_in_one_sentence(tmp_path):
    from export.native_weights import write_native_weights
    from training.samplernn import CONFIGS as SRNN, Model as SampleRNN

    m = make()
    good = tmp_path / "good.npz"
    native(m, good)
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a native VRNN weights file"):
        NativeVRNN(tmp_path / "cut.npz")
    srnn = write_native_weights(SampleRNN(SRNN["samplernn-tiny"]).eval(), tmp_path / "srnn.npz")
    with pytest.raises(UserError, match="not a native VRNN weights file"):
        NativeVRNN(srnn)
    arrays = dict(np.load(good))
    arrays["gru_h.w"] = arrays["gru_h.w"][:, :-1]
    with open(tmp_path / "shape.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(UserError, match="gru_h.w"):
        NativeVRNN(tmp_path / "shape.npz")
    rt = load_native_model(good)
    with pytest.raises(UserError, match="noise drawn by the runtime"):
        rt.set_control("eps_x", 0.0)


def test_grain_is_a_performer_parameter_from_preset_to_model(tmp_path):
    """grain (role "grain") is a knob like temperature: a performer parameter with a default CC, set from a preset's
    defaults when a Program starts, moved by set_param, and applied by render/eval to the preset's sound."""
    from types import SimpleNamespace

    from export.onnx_export import export_model
    from instrument.mapping import default_cc
    from instrument.model import load_model
    from instrument.params import apply_role_defaults, performer_params
    from instrument.sources import Program

    m = make()
    path = export_model(m, tmp_path / "g.onnx").path
    rt = load_model(path, device="cpu")
    assert [p.name for p in performer_params(rt.meta)][:2] == ["temperature", "grain"]
    assert [b.param for b in default_cc() if b.cc == 28] == ["grain"]
    preset = SimpleNamespace(name="g", mode="stream", defaults={"grain": 0.3}, latents={}, morph=None)
    program = Program(rt, 48000, 2, preset=preset)
    assert abs(float(rt.get_control("grain")[0]) - 0.3) < 1e-7
    program.set_param("grain", 0.9)
    assert abs(float(rt.get_control("grain")[0]) - 0.9) < 1e-7
    program.set_param("grain", 7.0)  # clamped to the control's range
    assert float(rt.get_control("grain")[0]) == 1.0
    # what render and eval do with a preset's defaults: the same control, the same sound as play starts with
    fresh = load_model(path, device="cpu")
    apply_role_defaults(fresh, {"grain": 0.3, "volume": 0.5})
    assert abs(float(fresh.get_control("grain")[0]) - 0.3) < 1e-7
    fresh.reset(1)
    loud = fresh.generate(2000)
    fresh.set_control("grain", 0.0)
    fresh.reset(1)
    assert not np.array_equal(loud, fresh.generate(2000))  # grain changes what is heard
