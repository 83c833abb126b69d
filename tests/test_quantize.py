"""Weight quantisation (export/quantize.py): int8/int4 graphs keep the streaming contract, the per-call error
against fp32 is measured, the sensitivity rule decides what stays fp32, and sampling models are refused."""
from __future__ import annotations

import argparse

import numpy as np
import onnx
import pytest
import torch

from export.quantize import QuantiseError, quantize_file, quantisation_error
from instrument.model import load_model
from jackutil import export_tiny

MIN = 4096  # the tiny configs' products are small; the default (16384) is for real models


@pytest.fixture(scope="module")
def vrnn(tmp_path_factory):
    return export_tiny("vrnn-tiny", tmp_path_factory.mktemp("q"))


@pytest.mark.parametrize("scheme,op", [("int8", "MatMulInteger"), ("int4", "MatMulNBits")])
def test_quantised_graph_streams_close_to_fp32(vrnn, tmp_path, scheme, op):
    out = tmp_path / f"v-{scheme}.onnx"
    report = quantize_file(vrnn, out, scheme, calls=60, min_weights=MIN, keep_error=None, max_error=1.0)
    assert report.matmuls == 6 and report.bytes_after < report.bytes_before
    assert op in {n.op_type for n in onnx.load(out).graph.node}
    q = load_model(out, device="cpu")
    assert q.meta.extra["weights"]["scheme"] == scheme and q.meta.precision == "float32"
    # It streams under the same contract: state fed back, finite audio, and it is the same model (close to fp32,
    # and much closer than the fp32 graph of another model with other weights).
    q.reset(0)
    audio = np.concatenate([q.step() for _ in range(50)], axis=-1)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert 0 < report.audio_rel_rms < 0.2, report.summary()
    other = export_tiny("vrnn-tiny", tmp_path / "other", seed=1)
    assert quantisation_error(vrnn, other, calls=20)["audio_rel_rms"] > 5 * report.audio_rel_rms


def test_sensitivity_rule_decides_what_stays_fp32(vrnn, tmp_path):
    # keep_error 0: every product moves the output a little, so every one stays fp32 and nothing is written.
    with pytest.raises(QuantiseError, match="stays fp32"):
        quantize_file(vrnn, tmp_path / "none.onnx", "int8", calls=0, min_weights=MIN, keep_error=0.0)
    assert not (tmp_path / "none.onnx").exists()
    # A middle budget keeps exactly the products whose solo error exceeds it, and says which.
    solo_all = quantize_file(vrnn, tmp_path / "all.onnx", "int8", calls=20, min_weights=MIN, keep_error=1e9)
    assert solo_all.kept == [] and solo_all.matmuls == 6
    report = quantize_file(vrnn, tmp_path / "mixed.onnx", "int8", calls=20, min_weights=MIN, keep_error=0.02)
    meta = load_model(tmp_path / "mixed.onnx", device="cpu").meta
    assert meta.extra["weights"]["kept_fp32"] == report.kept
    assert all(k["solo_error"] > 0.02 for k in report.kept) and report.matmuls + len(report.kept) == 6


def test_too_large_an_error_is_refused_and_nothing_is_written(vrnn, tmp_path):
    with pytest.raises(QuantiseError, match="change the audio"):
        quantize_file(vrnn, tmp_path / "x.onnx", "int4", calls=10, min_weights=MIN, keep_error=None, max_error=1e-6)
    assert not list(tmp_path.iterdir())


def test_sampling_models_and_requantising_are_refused(tmp_path):
    srnn = export_tiny("samplernn-tiny", tmp_path)
    with pytest.raises(QuantiseError, match="SampleRNN"):
        quantize_file(srnn, tmp_path / "s.onnx", "int8", min_weights=MIN)


def test_export_command_writes_int8_weights_with_the_measured_error(tmp_path, capsys):
    from export import cli
    from training.checkpoint import save_checkpoint
    from training.configs import build_model, get_config

    config = get_config("vrnn-tiny")
    torch.manual_seed(0)
    model = build_model(config)
    model.set_data_stats(0.01, 0.2)
    info = {"config": __import__("dataclasses").asdict(config), "kind": "vrnn", "history": {}}
    save_checkpoint(tmp_path / "run", 10, model, {}, info)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "v8.onnx"
    args = parser.parse_args([str(tmp_path / "run"), "--out", str(out), "--weights", "int8", "--verify-calls", "30",
                              "--min-weights", str(MIN), "--keep-error", "1"])
    assert cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "verify passed (30 streaming calls" in printed and "int8 weights: 6 products" in printed, printed
    assert load_model(out, device="cpu").meta.extra["weights"]["scheme"] == "int8"
    # SampleRNN: refused before anything is exported, in one sentence
    from instrument.errors import UserError

    srnn = get_config("samplernn-tiny")
    save_checkpoint(tmp_path / "srnn", 1, build_model(srnn), {},
                    {"config": __import__("dataclasses").asdict(srnn), "kind": "samplernn", "history": {}})
    refused = parser.parse_args([str(tmp_path / "srnn"), "--out", str(tmp_path / "s.onnx"), "--weights", "int8"])
    with pytest.raises(UserError, match="not SampleRNN"):
        cli.run(refused)
    assert not (tmp_path / "s.onnx").exists()
