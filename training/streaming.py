"""The streaming contract on the torch side (see instrument/meta.py for the shared description).

Every model is a `StreamingModel`:

    spec  = model.stream_meta()               # instrument.meta.ModelMeta: controls, state, block size...
    state = model.initial_state(batch)        # dict[str, Tensor], batch first, names = spec.state names
    audio, state = model.step(controls, state)  # controls: dict[str, Tensor] by spec.controls names

`step` must be pure tensor code (no Python randomness, no data-dependent Python control flow) so that
export/ can trace it into one ONNX graph with state in and state out. Noise comes in as a control.

Training uses `losses(batch)` (likelihood models) or the model's own adversarial methods (WaveGAN).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from instrument.meta import ModelMeta

State = dict[str, torch.Tensor]
Controls = dict[str, torch.Tensor]


class StreamingModel(nn.Module):
    kind: str = ""

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    # --- the contract ---------------------------------------------------------------------------------------
    def stream_meta(self) -> ModelMeta:
        raise NotImplementedError

    def initial_state(self, batch: int) -> State:
        raise NotImplementedError

    def step(self, controls: Controls, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    # --- helpers shared by every model ----------------------------------------------------------------------
    def default_controls(self, batch: int, generator: torch.Generator | None = None) -> Controls:
        """Controls at their defaults, with fresh noise drawn as the runtime would (for tests and rendering)."""
        out: Controls = {}
        for c in self.stream_meta().controls:
            shape = (batch, *c.shape)
            if c.role == "noise":
                if c.distribution == "normal":
                    out[c.name] = torch.randn(shape, generator=generator)
                else:
                    out[c.name] = torch.rand(shape, generator=generator)
            else:
                out[c.name] = torch.full(shape, float(c.default))
        return out

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @torch.no_grad()
    def generate(self, seconds: float, batch: int = 1, seed: int = 0, **control_values: float) -> torch.Tensor:
        """Audio [B, C, n] by repeated `step` calls: the same way the live engine drives the ONNX graph."""
        meta = self.stream_meta()
        n = int(seconds * meta.sample_rate)
        g = torch.Generator().manual_seed(seed)
        state = self.initial_state(batch)
        blocks, total = [], 0
        while total < n:
            controls = self.default_controls(batch, g)
            for k, v in control_values.items():
                controls[k] = torch.full_like(controls[k], float(v))
            audio, state = self.step(controls, state)
            blocks.append(audio)
            total += audio.shape[-1]
        return torch.cat(blocks, dim=-1)[..., :n]
