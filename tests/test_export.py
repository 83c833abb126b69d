"""Export parity: the ONNX graph, driven through the runtime, streams like the torch model (≥ 200 calls)."""
from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
import torch

from export.onnx_export import ExportError, export_model
from export.verify import verify_export
from instrument.errors import UserError
from instrument.meta import METADATA_KEY, ModelMeta
from instrument.model import load_model
from toy_models import ToyGenerator, ToyGRU, ToyQuantised

torch.set_num_threads(1)

CALLS = 200


KINDS = ("samplernn", "vrnn", "wavegan")  # every model kind has landed: a missing one is a failure, not a skip


@pytest.fixture(params=[ToyGRU, ToyGenerator, ToyQuantised], ids=lambda c: c.__name__)
def toy(request):
    torch.manual_seed(0)
    return request.param()


def test_toy_parity_over_streaming_calls(toy, tmp_path):
    result = export_model(toy, tmp_path / "toy.onnx")
    report = verify_export(toy, result.path, calls=CALLS)
    assert report.passed, report.summary()
    assert report.calls == CALLS
    assert report.max_abs_diff <= 1e-4
    assert report.flips == 0  # the toys are too small for a float rounding to cross a CDF boundary


def test_batch_axis_is_dynamic(tmp_path):
    torch.manual_seed(1)
    model = ToyGRU()
    path = export_model(model, tmp_path / "gru.onnx").path
    report = verify_export(model, path, calls=20, batch=3)
    assert report.passed, report.summary()


def test_metadata_is_complete(tmp_path):
    torch.manual_seed(0)
    model = ToyGRU()
    info = {"step": 1234, "data": {"sources": ["piano.flac"], "seconds": 8.0, "mean": 0.0, "std": 0.1}}
    result = export_model(model, tmp_path / "gru.onnx", info=info)
    proto = onnx.load(str(result.path))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = ModelMeta.from_json(props[METADATA_KEY])
    assert meta.kind == "vrnn" and meta.block_size == 16 and meta.sample_rate == 16000
    assert meta.training_data["sources"] == ["piano.flac"]
    assert meta.extra["checkpoint_step"] == 1234
    assert meta.config["name"] == "toy-gru"
    # the learned h0 travels in the metadata and the runtime starts from it
    assert np.allclose(meta.extra["initial_state"]["h"], model.h0.detach().numpy())
    assert "last" not in meta.extra["initial_state"]  # zeros are not stored
    runtime = load_model(result.path, device="cpu")
    assert np.allclose(runtime.get_state()["h"][0], model.h0.detach().numpy())
    assert [i.name for i in proto.graph.input] == meta.input_names()
    assert [o.name for o in proto.graph.output] == meta.output_names()
    onnx.checker.check_model(proto, full_check=True)


def test_offline_optimisation_reduces_nodes(tmp_path):
    torch.manual_seed(0)
    result = export_model(ToyGRU(), tmp_path / "gru.onnx")
    assert result.nodes_final < result.nodes_traced
    plain = export_model(ToyGRU(), tmp_path / "plain.onnx", optimise=False)
    assert plain.nodes_final == plain.nodes_traced


def test_verify_catches_a_wrong_graph(tmp_path):
    """A graph that does not match its torch model must fail verification (the check can fail)."""
    torch.manual_seed(0)
    exported = ToyGRU()
    path = export_model(exported, tmp_path / "gru.onnx").path
    torch.manual_seed(1)
    other = ToyGRU()
    report = verify_export(other, path, calls=10)
    assert not report.passed and "differs" in report.failure


def test_verify_catches_dropped_state(tmp_path):
    """A model exported without its streaming state (the clicks users report) fails verification."""

    class Forgetful(ToyGRU):
        def step(self, controls, state):
            audio, new = super().step(controls, state)
            return audio, {"h": torch.zeros_like(new["h"]) + self.h0, "last": new["last"]}

    torch.manual_seed(0)
    forgetful = Forgetful()
    path = export_model(forgetful, tmp_path / "forgetful.onnx").path
    honest = ToyGRU()
    honest.load_state_dict(forgetful.state_dict())  # the same weights, with the state carried
    report = verify_export(honest, path, calls=10)
    assert not report.passed
    assert verify_export(forgetful, path, calls=10).passed  # the graph itself is a faithful trace


def test_a_chaotic_recurrence_is_verified_call_by_call_and_a_wrong_graph_still_fails(tmp_path):
    """A GRU made chaotic (recurrent weights ×6): the closed loop drifts past the tolerance within a few calls
    though every call from torch's state matches to ~1e-6; `verify_streaming` accepts it and says so. A graph of
    other weights, or one that drops its state, still fails."""
    from export.verify import verify_streaming

    def chaotic(seed):
        torch.manual_seed(seed)
        m = ToyGRU()
        with torch.no_grad():
            m.cell.weight_hh.mul_(6.0)
            m.out.weight.mul_(3.0)
        return m

    model = chaotic(0)
    path = export_model(model, tmp_path / "chaotic.onnx").path
    closed = verify_export(model, path, calls=CALLS)
    assert not closed.passed and 2 <= closed.calls < CALLS  # held a few calls, then drifted
    report, note = verify_streaming(model, path, calls=CALLS)
    assert report.passed and report.calls == CALLS and report.max_state_diff < 1e-4
    assert note is not None and f"held the tolerance for {closed.calls - 1} calls" in note
    wrong, wrong_note = verify_streaming(chaotic(1), path, calls=CALLS)
    assert not wrong.passed and wrong_note is None
    calm = ToyGRU()
    calm_report, calm_note = verify_streaming(calm, export_model(calm, tmp_path / "calm.onnx").path, calls=20)
    assert calm_report.passed and calm_note is None

    class Forgetful(ToyGRU):
        def step(self, controls, state):
            audio, new = super().step(controls, state)
            return audio, {"h": torch.zeros_like(new["h"]) + self.h0, "last": new["last"]}

    forgetful = Forgetful()
    forgetful.load_state_dict(model.state_dict())
    dropped = export_model(forgetful, tmp_path / "forgetful.onnx").path
    assert not verify_streaming(model, dropped, calls=CALLS)[0].passed


def test_inconsistent_initial_state_is_refused(tmp_path):
    class Uneven(ToyGRU):
        def initial_state(self, batch):
            s = super().initial_state(batch)
            s["last"] = torch.arange(batch, dtype=torch.float32)[:, None]
            return s

    with pytest.raises(ExportError, match="differs between batch items"):
        export_model(Uneven(), tmp_path / "uneven.onnx")


def test_fp16_export_loads_and_is_close(tmp_path):
    torch.manual_seed(0)
    model = ToyGenerator()
    result = export_model(model, tmp_path / "gen16.onnx", fp16=True)
    assert result.meta.precision == "float16"
    runtime = load_model(result.path, device="cpu")
    assert runtime.meta.control("z").dtype == "float16"
    report = verify_export(model, result.path, calls=20)
    assert report.passed, report.summary()
    assert report.max_abs_diff > 0  # it really is half precision


def test_fp16_is_refused_for_sampling_models(tmp_path):
    with pytest.raises(ExportError, match="fp16"):
        export_model(ToyQuantised(), tmp_path / "q16.onnx", fp16=True)


def test_fp16_keeps_recurrent_models_close(tmp_path):
    torch.manual_seed(0)
    model = ToyGRU()
    result = export_model(model, tmp_path / "gru16.onnx", fp16=True)
    report = verify_export(model, result.path, calls=CALLS)
    assert report.passed, report.summary()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"{k}-tiny")
def test_real_tiny_model_parity(kind, tmp_path):
    module = importlib.import_module(f"training.{kind}")
    config = module.CONFIGS[f"{kind}-tiny"]
    torch.manual_seed(0)
    model = module.Model(config)
    if hasattr(model, "set_data_stats"):
        model.set_data_stats(0.0, 0.2)
    result = export_model(model, tmp_path / f"{kind}.onnx")
    report = verify_export(model, result.path, calls=CALLS)
    print(kind, result.notes, report.summary())
    assert report.passed, report.summary()
    assert report.calls == CALLS
    batched = verify_export(model, result.path, calls=10, batch=2, seed=1)  # the dynamic batch axis, for real
    assert batched.passed, batched.summary()
    if not result.meta.quantization:
        half = export_model(model, tmp_path / f"{kind}16.onnx", fp16=True)
        report16 = verify_export(model, half.path, calls=20)
        assert report16.passed, report16.summary()


class _NudgedQuantised(ToyQuantised):
    """The same model with its uniform noise nudged: sometimes lands on the adjacent level, never further."""

    nudge = 2e-3

    def step(self, controls, state):
        controls = dict(controls, noise=(controls["noise"] + self.nudge).clamp(max=1.0))
        return super().step(controls, state)


def test_adjacent_level_flips_are_counted_resynchronised_and_bounded(tmp_path):
    torch.manual_seed(0)
    model = ToyQuantised()
    path = export_model(model, tmp_path / "q.onnx").path
    nudged = _NudgedQuantised()
    nudged.load_state_dict(model.state_dict())
    lenient = verify_export(nudged, path, calls=CALLS, max_flip_rate=0.5)
    assert lenient.passed, lenient.summary()
    assert lenient.flips > 0  # flips happened, each resynchronised, and nothing else differed
    strict = verify_export(nudged, path, calls=CALLS)  # the default rule: a flip must be rare (≤ 1e-3)
    assert not strict.passed and "flips" in strict.failure


def _neuralinst(*args, timeout=240):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "neuralinst", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_export_command_from_a_checkpoint(tmp_path, capsys):
    """`neuralinst export RUN --out M.onnx` on a real checkpoint: exported, verified, loadable, metadata filled."""
    from training.checkpoint import save_checkpoint
    from training.configs import build_model, get_config

    config = get_config("vrnn-tiny")
    torch.manual_seed(0)
    model = build_model(config)
    model.set_data_stats(0.01, 0.2)
    data = {"sources": ["piano.flac"], "seconds": 8.0, "sample_rate": config.sample_rate}
    info = {"config": __import__("dataclasses").asdict(config), "kind": "vrnn", "data": data,
            "history": {"valid": [{"step": 10, "loss": 1.5}]}}
    save_checkpoint(tmp_path / "run", 10, model, {}, info)
    out = tmp_path / "vrnn.onnx"
    r = _neuralinst("export", str(tmp_path / "run"), "--out", str(out), "--verify-calls", "200")
    assert r.returncode == 0, r.stderr
    assert "verify passed (200 streaming calls" in r.stdout, r.stdout
    meta = load_model(out, device="cpu").meta
    assert meta.kind == "vrnn" and meta.training_data["sources"] == ["piano.flac"]
    assert meta.extra["checkpoint_step"] == 10 and meta.extra["last_validation"]["loss"] == 1.5
    assert meta.config["name"] == "vrnn-tiny"
    # --fp16, in-process (the dispatcher is proven above): verified too, on the CPU when there is no GPU
    import argparse

    from export import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    half = tmp_path / "vrnn16.onnx"
    args = parser.parse_args([str(tmp_path / "run"), "--out", str(half), "--fp16", "--verify-calls", "20"])
    assert cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "float16" in printed and "verify passed (20 streaming calls" in printed, printed
    assert load_model(half, device="cpu").meta.precision == "float16"


def test_export_command_refuses_with_one_sentence(tmp_path):
    r = _neuralinst("export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 1 and "no such checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # an empty run folder: refused by the checkpoint loader, as a UserError (in-process: torch is loaded already)
    import argparse

    from export import cli

    (tmp_path / "run").mkdir()
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(UserError):
        cli.run(parser.parse_args([str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx")]))
    assert not (tmp_path / "m.onnx").exists()


def test_verify_catches_a_control_baked_in_by_tracing(tmp_path):
    """Tracing a Python float instead of the temperature input gives a graph that only plays at the default."""

    class Baked(ToyGRU):
        def step(self, controls, state):
            frozen = torch.ones_like(controls["temperature"])  # the input is ignored: the bug
            return super().step(dict(controls, temperature=frozen), state)

    torch.manual_seed(0)
    baked = Baked()
    path = export_model(baked, tmp_path / "baked.onnx").path
    honest = ToyGRU()
    honest.load_state_dict(baked.state_dict())
    report = verify_export(honest, path, calls=10)
    assert not report.passed


def test_dadabots_style_samplernn_parity(tmp_path):
    """Dadabots' variant on a tiny scale: one LSTM frame tier, skip connections, weight norm, randomised h0 (the
    runtime seeds it; torch starts from the runtime's state)."""
    import dataclasses

    from training.samplernn import CONFIGS, Model

    config = dataclasses.replace(CONFIGS["samplernn-tiny"], frame_sizes=(8,), rnn="lstm", skip_connections=True,
                                 weight_norm=True, learn_h0=False, h0_random_std=0.5, quantization="linear")
    torch.manual_seed(0)
    model = Model(config)
    result = export_model(model, tmp_path / "dadabots.onnx")
    assert result.meta.extra["initial_state_noise_std"]
    report = verify_export(model, result.path, calls=CALLS)
    assert report.passed, report.summary()
