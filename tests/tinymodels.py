"""Tiny but real neuralinst ONNX models for UI/preset tests, built with onnx.helper (no training, no torch).

`tiny_wavegan(path)` obeys the streaming contract of docs/DESIGN.md §1: control `z` [latent] (role latent), no
state, output `audio` [B, 1, block] = tanh(z @ W) — a fixed random projection, so different latents really sound
different and the engine can drive it like any WaveGAN.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np


def tiny_wavegan(path: Path, latent: int = 16, block: int = 4096, sample_rate: int = 16000, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from instrument.meta import METADATA_KEY, ControlSpec, ModelMeta

    rng = np.random.default_rng(seed)
    # Each latent direction is a decaying tone at its own pitch: a plausible little "instrument".
    t = np.arange(block) / sample_rate
    freqs = 110.0 * 2 ** (np.arange(latent) / 4)
    w = (np.sin(2 * np.pi * freqs[:, None] * t[None, :]) * np.exp(-3 * t)[None, :] / np.sqrt(latent))
    w = (w + 0.01 * rng.standard_normal(w.shape)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["z", "W"], ["y"]),
        helper.make_node("Tanh", ["y"], ["t"]),
        helper.make_node("Unsqueeze", ["t", "axis1"], ["audio"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_wavegan",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", latent])],
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 1, block])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMeta(kind="wavegan", sample_rate=sample_rate, channels=1, block_size=block,
                     controls=[ControlSpec("z", [latent], "latent", -1.0, 1.0, 0.0)], state=[],
                     latent_size=latent, name="tiny-wavegan")
    meta.validate()
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    from instrument.model import seal_bytes

    path.write_bytes(seal_bytes(model.SerializeToString()))  # sealed like `neuralinst export`, so load_model takes it
    return path
