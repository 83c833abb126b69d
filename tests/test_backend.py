"""The runtime's two executors for SampleRNN: `neuralinst export` writes MODEL.native.npz beside MODEL.onnx,
`load_model(backend=...)` picks the C loop or the graph, both play the same samples for the same seed (up to the
documented adjacent-level flip, see tests/test_native.py), and weights that do not belong to the graph are refused.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from instrument.errors import UserError
from instrument.model import load_model, native_weights_path
from neuralinst.cli import main as neuralinst

torch.set_num_threads(1)
CALLS = "12"  # verification calls per executor in these tests (the CLI's defaults are 200 and 60)


def make_checkpoint(run, seed: int = 0, **overrides):
    import dataclasses

    from training.checkpoint import save_checkpoint
    from training.samplernn import CONFIGS, Model

    torch.manual_seed(seed)
    m = Model(dataclasses.replace(CONFIGS["samplernn-tiny"], **overrides)).eval()
    with torch.no_grad():  # a non-trivial learned h0, so a wrong initial state shows
        for t in m.tiers:
            t.h0.add_(0.1 * torch.randn_like(t.h0))
    save_checkpoint(run, 5, m, {}, {"config": m.config_dict()})
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """samplernn-tiny exported by the CLI, as a performer would: MODEL.onnx and MODEL.native.npz."""
    folder = tmp_path_factory.mktemp("backend")
    run = make_checkpoint(folder / "run")
    out = folder / "tiny.onnx"
    assert neuralinst(["export", str(run), "--out", str(out), "--verify-calls", CALLS,
                       "--native-verify-calls", CALLS]) == 0
    return out


def one_sentence(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text.endswith(".") and "Traceback" not in text, text
    return text


def test_export_writes_verified_native_weights_paired_with_the_graph(exported, capsys):
    npz = native_weights_path(exported)
    assert npz.name == "tiny.native.npz" and npz.is_file()
    from instrument.model import SEAL_KEY, scan_onnx_bytes
    from instrument.meta import ModelMeta

    with np.load(npz, allow_pickle=False) as f:
        meta = ModelMeta.from_json(bytes(f["meta_json"]).decode())
        assert int(f["header"][7]) == 0  # float32 matrices by default
    assert meta.extra["onnx_sha256"] == scan_onnx_bytes(exported.read_bytes()).metadata[SEAL_KEY]


def test_auto_picks_native_and_onnx_picks_the_graph_and_both_play_the_same(exported):
    native = load_model(exported, device="cpu", backend="auto")
    graph = load_model(exported, device="cpu", backend="onnx")
    assert (native.backend, native.providers, native.backend_note) == ("native", ["native"], None)
    assert graph.backend == "onnx" and graph.providers == ["CPUExecutionProvider"]
    assert native.meta == graph.meta and native.path == graph.path == exported  # the checked ONNX description
    assert load_model(exported, backend="native").backend == "native"
    levels = graph.meta.quantization["levels"]
    native.reset(11)
    graph.reset(11)
    for name, value in graph.get_state().items():
        assert np.array_equal(native.get_state()[name], value), name
    flips = 0
    for k in range(60):
        t = (0.4, 1.0, 1.6)[k % 3]
        native.set_control("temperature", t)
        graph.set_control("temperature", t)
        a, b = graph.generate(native.block_size), native.generate(native.block_size)
        la, lb = (np.rint((x[0].astype(np.float64) + 1) * levels / 2).astype(int) for x in (a, b))  # linear levels
        if not np.array_equal(la, lb):
            j = int(np.nonzero(la != lb)[0][0])  # the first difference: later samples follow from it
            assert abs(la[j] - lb[j]) == 1, f"call {k} sample {j}: levels {la[j]} vs {lb[j]}"
            flips += 1
            native.set_state(graph.get_state())  # resynchronise and go on
            continue
        assert np.abs(a - b).max() <= 1e-6
    assert flips <= 2


def test_without_native_weights_auto_plays_the_graph_and_native_is_refused(exported, tmp_path):
    alone = tmp_path / "alone.onnx"
    shutil.copy(exported, alone)
    model = load_model(alone, device="cpu")
    assert model.backend == "onnx" and "no native weights" in model.backend_note
    with pytest.raises(UserError) as e:
        load_model(alone, backend="native")
    assert "alone.native.npz" in one_sentence(e)
    with pytest.raises(UserError) as e:
        load_model(exported, backend="native", device="cuda")
    assert "runs on the CPU" in one_sentence(e)
    with pytest.raises(UserError) as e:
        load_model(exported, backend="jit")
    assert "unknown backend" in one_sentence(e)


def copy_with(exported, folder, npz_bytes: bytes):
    folder.mkdir()
    onnx = folder / "m.onnx"
    shutil.copy(exported, onnx)
    native_weights_path(onnx).write_bytes(npz_bytes)
    return onnx


def test_corrupt_or_mismatching_native_weights_are_refused_in_one_sentence(exported, tmp_path):
    from export.native_weights import write_native_weights
    from training.checkpoint import load_model as load_checkpoint

    good = native_weights_path(exported).read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0xFF  # one damaged byte inside an array: the archive's CRC catches it
    cases = {
        "truncated": (good[: len(good) // 2], "not a readable native weights file"),
        "garbage": (b"PK\x03\x04" + bytes(200), "not a readable native weights file"),
        "not a zip": (b"junk", "not a readable native weights file"),
        "bit flip": (bytes(flipped), "not a readable native weights file"),
    }
    # another model's weights: a wider tier (its state differs), and the same config at another seed and step
    wide, _ = load_checkpoint(make_checkpoint(tmp_path / "wide", dim=36))
    cases["wider"] = (write_native_weights(wide, tmp_path / "wide.npz").read_bytes(), "state differs")
    other, info = load_checkpoint(make_checkpoint(tmp_path / "other", seed=3))
    cases["other seed"] = (write_native_weights(other, tmp_path / "o.npz", info).read_bytes(),
                           "learned initial state differs")
    same, info = load_checkpoint(exported.parent / "run")
    cases["other step"] = (write_native_weights(same, tmp_path / "s.npz", dict(info, step=6)).read_bytes(),
                           "checkpoint step differs")
    # the same config and step, but another export's weights: the seal pairing tells them apart
    with np.load(native_weights_path(exported), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    text = bytes(arrays["meta_json"]).decode().replace(
        '"onnx_sha256": "', '"onnx_sha256": "0')
    arrays["meta_json"] = np.frombuffer(text.encode(), np.uint8).copy()
    resealed = tmp_path / "resealed.npz"
    with open(resealed, "wb") as f:
        np.savez(f, **arrays)
    cases["other export"] = (resealed.read_bytes(), "another export")
    for i, (label, (data, words)) in enumerate(cases.items()):
        onnx = copy_with(exported, tmp_path / f"case{i}", data)
        with pytest.raises(UserError) as e:
            load_model(onnx, backend="native")
        text = one_sentence(e)
        assert words in text and "m.native.npz" in text, (label, text)
        fallback = load_model(onnx, device="cpu")  # auto: the checked graph plays, and says why
        assert fallback.backend == "onnx" and fallback.backend_note == text, label


def test_only_samplernn_and_vrnn_have_a_native_backend(tmp_path):
    from export.onnx_export import export_model
    from toy_models import ToyGenerator, ToyGRU

    torch.manual_seed(0)
    path = export_model(ToyGenerator(), tmp_path / "gen.onnx").path  # kind wavegan
    with pytest.raises(UserError) as e:
        load_model(path, backend="native")
    assert "SampleRNN and VRNN models only" in one_sentence(e)
    graph = load_model(path)
    assert graph.backend == "onnx" and graph.backend_note is None  # nothing faster exists: nothing to tell the UI
    path = export_model(ToyGRU(), tmp_path / "gru.onnx").path  # kind vrnn, exported without native weights
    with pytest.raises(UserError) as e:
        load_model(path, backend="native")
    assert "no native weights beside it" in one_sentence(e)
    assert load_model(path).backend == "onnx"


def test_render_backend_native_is_deterministic_and_says_so(exported, tmp_path, capsys):
    outs = []
    for k in range(2):
        out = tmp_path / f"native{k}.wav"
        assert neuralinst(["render", "--model", str(exported), "--seconds", "0.5", "--seed", "4", "--out",
                           str(out), "--backend", "native", "--subtype", "FLOAT"]) == 0
        outs.append(out)
        assert "(native backend)" in capsys.readouterr().out
    # The audio, sample for sample (not the files' bytes: libsndfile stamps a float WAV's PEAK chunk with the
    # second it was written, and two renders can fall either side of a second).
    first, second = (sf.read(o, dtype="float32")[0] for o in outs)
    assert np.array_equal(first, second)
    assert neuralinst(["render", "--model", str(exported), "--seconds", "0.5", "--seed", "4", "--out",
                       str(tmp_path / "onnx.wav"), "--backend", "onnx", "--subtype", "FLOAT"]) == 0
    assert "(onnx backend)" in capsys.readouterr().out
    a, _ = sf.read(outs[0], dtype="float32")
    b, _ = sf.read(tmp_path / "onnx.wav", dtype="float32")
    assert a.shape == b.shape == (8000,) and np.abs(a).max() > 0
    first = np.nonzero(np.abs(a - b) > 1e-6)[0]
    # identical up to the first (rare, adjacent-level) flip; after it the two are different performances
    assert first.size == 0 or (first[0] > 0 and abs(a[first[0]] - b[first[0]]) <= 2 / 256 + 1e-6)
    assert neuralinst(["render", "--model", str(exported), "--seconds", "0.5", "--out", str(tmp_path / "x.wav"),
                       "--backend", "native", "--device", "cuda"]) != 0
    assert "runs on the CPU" in capsys.readouterr().err


def test_native_half_and_no_native_exports(tmp_path, capsys):
    run = make_checkpoint(tmp_path / "run")
    out = tmp_path / "half.onnx"
    assert neuralinst(["export", str(run), "--out", str(out), "--native-half", "--verify-calls", CALLS,
                       "--native-verify-calls", CALLS]) == 0
    printed = capsys.readouterr().out
    assert "float16 matrices" in printed and printed.count("verify passed") == 2  # graph and native, both
    model = load_model(out, device="cpu", backend="native")
    assert model.net.half
    graph = load_model(out, device="cpu", backend="onnx")  # the graph came from the same rounded model
    model.reset(2)
    graph.reset(2)
    a, b = model.generate(320), graph.generate(320)
    first = np.nonzero(np.abs(a - b) > 1e-6)[1]
    assert first.size == 0 or first[0] > 32  # at most a late flip, never a different model
    # --no-native: no weights, and the stale ones of the earlier export are gone (they would pair by config)
    assert neuralinst(["export", str(run), "--out", str(out), "--no-native", "--no-verify"]) == 0
    assert not native_weights_path(out).exists() and load_model(out).backend == "onnx"
    assert neuralinst(["export", str(run), "--out", str(tmp_path / "y.onnx"), "--native-half", "--no-native"]) != 0
    assert "--native-half" in capsys.readouterr().err


@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_no_compiler_or_a_failed_build_falls_back_or_is_one_sentence(compiler, exported, tmp_path, monkeypatch):
    """A machine whose C loop cannot be built: auto plays the graph and says why; native is refused."""
    from instrument.native import build

    monkeypatch.setattr(build, "LIBRARY", tmp_path / "_native.so")  # not built here yet
    monkeypatch.setattr(build, "_LOADED", {})  # forget the library this process already loaded
    if compiler == "missing":
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang to be found
    else:
        monkeypatch.setenv("CC", shutil.which("false"))  # a compiler that fails every build
    with pytest.raises(UserError) as e:
        load_model(exported, backend="native")
    text = one_sentence(e)
    assert "cannot run on this machine" in text and ("no C compiler" in text) == (compiler == "missing"), text
    model = load_model(exported, device="cpu")
    assert model.backend == "onnx" and model.backend_note == text
    assert not build.LIBRARY.exists()
