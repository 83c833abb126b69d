"""Rebuild a training checkpoint from a shipped SampleRNN or WaveGAN graph, for a preset whose training run is gone.

    python -m export.recover presets/samplernn-loud/model.onnx --out runs/samplernn-loud-recovered

Why: the native loop's weight storage (float32 / float16 / int8) is chosen at export, from the torch model. A preset
shipped with float16 native weights can only move to int8 (2x faster on a Zen 1 core: `neuralinst bench native`)
through a torch model holding the same weights. The graph has them all: the named initializers are the model's
parameters (weight normalisation already folded in), and the rest are recognised by shape and checked by value:

- `mlp.input_tables()` [frame, q, dim] = embedding x input conv: with the embedding set to the identity (it is
  q x q here), the conv weight is the table itself, so the product is the same to the last bit;
- each tier's `upsample_bias` [dim, frame] (the graph holds it transposed);
- each tier's learned `h0` (`c0`), from the metadata's initial state (absent there: zero).

The checkpoint has the config, step and validation figures of the metadata and no optimiser state: it can be
exported (`neuralinst export RUN --native-int8 ...`), not resumed. `recover` refuses a graph it cannot map whole.

A WaveGAN graph holds its generator whole (plain named weights); its critic was never exported, so the recovered
checkpoint carries a fresh one, and training goes on as a new run from it: `neuralinst train CONFIG --init-from RUN
--critic-only-steps N` (the generator waits N steps while the new critic learns what real clips look like).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from onnx import numpy_helper

from instrument.errors import UserError


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx

    graph = onnx.load(str(path)).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def recover_samplernn(path: str | Path):
    """(torch Model in eval mode with the graph's weights, checkpoint info) for a SampleRNN graph."""
    from instrument.model import load_model as load_runtime
    from training.configs import build_model, config_from_dict

    path = Path(path)
    meta = load_runtime(path, device="cpu", threads=1, batch=1).meta
    if meta.kind != "samplernn":
        raise UserError(f"{path} is a {meta.kind} model; only SampleRNN graphs can be recovered.")
    config = config_from_dict(dict(meta.config))
    model = build_model(config)
    model._fold_weight_norm_()  # plain weights, as the graph holds them
    inits = _initializers(path)
    named = {k.removeprefix("model."): v for k, v in inits.items() if k.startswith("model.")}
    params = dict(model.named_parameters())
    used = set()
    with torch.no_grad():
        for name, p in params.items():
            if name in named:
                if tuple(named[name].shape) != tuple(p.shape):
                    raise UserError(f"{path}: {name} is {named[name].shape} in the graph, {tuple(p.shape)} here.")
                p.copy_(torch.from_numpy(np.array(named[name])))
                used.add(name)
        unnamed = {k: v for k, v in inits.items() if not k.startswith(("model.", "/"))}
        # The MLP's input tables: one initializer [frame * q, dim].
        mlp = model.mlp
        fs, q, d = mlp.input.weight.shape[2], mlp.embedding.weight.shape[0], mlp.input.weight.shape[0]
        if mlp.embedding.weight.shape[1] != q:
            raise UserError(f"{path}: the embedding is not square (q x q); its tables cannot be split back.")
        tables = [v for v in unnamed.values() if v.shape == (fs * q, d)]
        if len(tables) != 1:
            raise UserError(f"{path}: expected one [{fs * q}, {d}] table initializer, found {len(tables)}.")
        mlp.embedding.weight.copy_(torch.eye(q))
        table = torch.from_numpy(np.array(tables[0]).reshape(fs, q, d))
        mlp.input.weight.copy_(table.permute(2, 1, 0))  # [dim, emb, fs]
        used |= {"mlp.embedding.weight", "mlp.input.weight"}
        # Upsampling biases [dim, frame], stored transposed; and the learned initial states.
        initial = (meta.extra or {}).get("initial_state", {})
        for i, tier in enumerate(model.tiers):
            bias = tier.upsample_bias
            found = [v for v in unnamed.values() if v.shape == tuple(bias.shape[::-1])]
            if len(found) != 1:  # none, or two tiers with the same frame (then which is which is not recoverable)
                raise UserError(f"{path}: tier {i}'s upsampling bias {tuple(bias.shape[::-1])} is not recognisable "
                                f"in the graph ({len(found)} candidates).")
            bias.copy_(torch.from_numpy(np.array(found[0])).T)
            used.add(f"tiers.{i}.upsample_bias")
            for state, attr in ((f"tier{i}.h", "h0"), (f"tier{i}.c", "c0")):
                value = getattr(tier, attr, None)
                if value is not None:  # the export writes only non-zero initial states into the metadata
                    v = initial.get(state)
                    value.copy_(torch.as_tensor(np.asarray(v, np.float32)).reshape(value.shape) if v is not None
                                else torch.zeros_like(value))
                    used.add(f"tiers.{i}.{attr}")
    missing = sorted(set(params) - used)
    if missing:
        raise UserError(f"{path}: no value in the graph for {', '.join(missing[:4])} (graphs exported with "
                        "--native-half or --native-int8 name every weight; otherwise weight normalisation is "
                        "folded into unnamed constants).")
    model.mlp._tables = None
    extra = meta.extra or {}
    info = {"config": dict(meta.config), "kind": meta.kind, "step": int(extra.get("checkpoint_step", 0)),
            "recovered_from": str(path)}
    if extra.get("last_validation"):
        info["history"] = {"valid": [extra["last_validation"]]}  # the export carries it into the metadata again
    if getattr(meta, "training_data", None):
        info["training_data"] = meta.training_data
    return model.eval(), info


def recover_wavegan(path: str | Path, seed: int = 0):
    """(torch Model in eval mode, checkpoint info) for a WaveGAN graph: the generator's weights are the graph's named
    initializers; the critic never ships, so it is freshly initialised (seeded). Train from it with
    `neuralinst train ... --init-from RUN --critic-only-steps N`, so the new critic learns before it steers."""
    from instrument.model import load_model as load_runtime
    from training.configs import build_model, config_from_dict

    path = Path(path)
    meta = load_runtime(path, device="cpu", threads=1, batch=1).meta
    if meta.kind != "wavegan":
        raise UserError(f"{path} is a {meta.kind} model, not a WaveGAN.")
    config = config_from_dict(dict(meta.config))
    torch.manual_seed(seed)
    model = build_model(config)
    named = {k.removeprefix("model."): v for k, v in _initializers(path).items() if k.startswith("model.")}
    params = dict(model.generator.named_parameters(prefix="generator"))
    missing = sorted(set(params) - set(named))
    if missing:
        raise UserError(f"{path}: no value in the graph for {', '.join(missing[:4])}.")
    with torch.no_grad():
        for name, p in params.items():
            if tuple(named[name].shape) != tuple(p.shape):
                raise UserError(f"{path}: {name} is {named[name].shape} in the graph, {tuple(p.shape)} here.")
            p.copy_(torch.from_numpy(np.array(named[name])))
    extra = meta.extra or {}
    info = {"config": dict(meta.config), "kind": meta.kind, "step": int(extra.get("checkpoint_step", 0)),
            "recovered_from": str(path), "critic": f"freshly initialised (seed {seed}): the graph holds no critic"}
    if getattr(meta, "training_data", None):
        info["training_data"] = meta.training_data
    return model.eval(), info


RECOVER = {"samplernn": recover_samplernn, "wavegan": recover_wavegan}


def recover(path: str | Path):
    """The torch model and checkpoint info a shipped graph holds, for the kinds that can be recovered."""
    from instrument.model import load_model as load_runtime

    kind = load_runtime(path, device="cpu", threads=1, batch=1).meta.kind
    if kind not in RECOVER:
        raise UserError(f"{path} is a {kind} model; only {' and '.join(sorted(RECOVER))} graphs can be recovered.")
    return RECOVER[kind](path)


def save_recovered(model, info: dict, out: str | Path) -> Path:
    """A checkpoint folder `out` that `neuralinst export` reads (weights in the trainer's layout)."""
    from training.checkpoint import save_checkpoint
    from training.configs import build_model, config_from_dict

    fresh = build_model(config_from_dict(info["config"]))  # with weight normalisation, as training saves it
    with torch.no_grad():
        plain = dict(model.named_parameters())
        for name, p in fresh.named_parameters():
            if ".parametrizations.weight.original" not in name:
                p.copy_(plain[name])
        for module_name, module in fresh.named_modules():
            if hasattr(module, "parametrizations"):
                w = plain[f"{module_name}.weight"]
                g = module.parametrizations.weight.original0
                dims = [k for k in range(w.dim()) if k != 0]
                g.copy_(w.norm(dim=dims, keepdim=True).reshape(g.shape) if dims else w.abs().reshape(g.shape))
                module.parametrizations.weight.original1.copy_(w)
    return save_checkpoint(out, info["step"], fresh, {}, info)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.recover", description=__doc__.splitlines()[0])
    p.add_argument("model", help="a shipped SampleRNN or WaveGAN .onnx")
    p.add_argument("--out", required=True, help="the run folder to write (RUN/checkpoints/step_N)")
    args = p.parse_args(argv)
    try:
        model, info = recover(args.model)
    except UserError as e:
        raise SystemExit(f"export.recover: {e}") from None
    folder = save_recovered(model, info, args.out)
    print(f"wrote {folder} (step {info['step']}, recovered from {args.model})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
