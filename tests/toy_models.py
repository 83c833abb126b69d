"""Small StreamingModels for the export and runtime tests: the contract's shapes without any real model's cost.

- ToyGRU: stateful, sample by sample (a GRU cell over the block), a temperature and a normal noise control, a
  learned (non-zero) initial hidden state and the last output sample carried as state: like VRNN/SampleRNN.
- ToyGenerator: stateless, a latent vector in, a stereo clip out: like WaveGAN.
- ToyQuantised: samples one of `levels` linear levels per sample by inverting a softmax CDF with uniform noise,
  with the previous sample as state: the sampling scheme of SampleRNN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from instrument.meta import ControlSpec, ModelMeta, StateSpec
from training.streaming import StreamingModel


@dataclass
class ToyConfig:
    name: str = "toy"
    kind: str = "vrnn"
    sample_rate: int = 16000
    channels: int = 1
    block: int = 16
    hidden: int = 24
    latent: int = 8
    levels: int = 16


class ToyGRU(StreamingModel):
    kind = "vrnn"

    def __init__(self, config: ToyConfig | None = None):
        super().__init__(config or ToyConfig(name="toy-gru"))
        c = self.config
        self.cell = nn.GRUCell(2, c.hidden)
        self.out = nn.Linear(c.hidden, 1)
        self.h0 = nn.Parameter(torch.randn(c.hidden) * 0.3)

    def stream_meta(self) -> ModelMeta:
        c = self.config
        return ModelMeta(
            kind=self.kind, sample_rate=c.sample_rate, channels=1, block_size=c.block,
            controls=[
                ControlSpec("temperature", [], "temperature", minimum=0.0, maximum=2.0, default=1.0),
                ControlSpec("eps", [c.block], "noise", distribution="normal"),
            ],
            state=[StateSpec("h", [c.hidden]), StateSpec("last", [1])],
        )

    def initial_state(self, batch):
        return {"h": self.h0.detach().expand(batch, -1).clone(), "last": torch.zeros(batch, 1)}

    def step(self, controls, state):
        h, last = state["h"], state["last"]
        temperature = controls["temperature"][:, None]
        samples = []
        for i in range(self.config.block):
            x = torch.cat([last, controls["eps"][:, i:i + 1] * temperature], dim=-1)
            h = self.cell(x, h)
            last = torch.tanh(self.out(h))
            samples.append(last)
        audio = torch.cat(samples, dim=-1)[:, None, :]
        return audio, {"h": h, "last": last}


class ToyGenerator(StreamingModel):
    kind = "wavegan"

    def __init__(self, config: ToyConfig | None = None):
        super().__init__(config or ToyConfig(name="toy-generator", kind="wavegan", channels=2, block=64))
        c = self.config
        self.fc = nn.Linear(c.latent, 32 * 8)
        self.up = nn.ConvTranspose1d(32, c.channels, kernel_size=16, stride=8, padding=4)

    def stream_meta(self) -> ModelMeta:
        c = self.config
        return ModelMeta(
            kind=self.kind, sample_rate=c.sample_rate, channels=c.channels, block_size=c.block,
            controls=[ControlSpec("z", [c.latent], "latent", minimum=-1.0, maximum=1.0)],
            state=[], latent_size=c.latent,
        )

    def initial_state(self, batch):
        return {}

    def step(self, controls, state):
        x = torch.relu(self.fc(controls["z"])).view(-1, 32, 8)
        return torch.tanh(self.up(x)), {}


class ToyQuantised(StreamingModel):
    kind = "samplernn"

    def __init__(self, config: ToyConfig | None = None):
        super().__init__(config or ToyConfig(name="toy-quantised", kind="samplernn", block=8))
        c = self.config
        self.table = nn.Linear(1, c.levels)
        self.register_buffer("levels_values", torch.arange(c.levels) / (c.levels / 2) - 1.0)  # "linear" as SampleRNN

    def stream_meta(self) -> ModelMeta:
        c = self.config
        return ModelMeta(
            kind=self.kind, sample_rate=c.sample_rate, channels=1, block_size=c.block,
            controls=[
                ControlSpec("temperature", [], "temperature", minimum=0.05, maximum=2.0, default=1.0),
                ControlSpec("noise", [c.block], "noise", distribution="uniform"),
            ],
            state=[StateSpec("last", [1])],
            quantization={"levels": c.levels, "scheme": "linear"},
        )

    def initial_state(self, batch):
        return {"last": torch.zeros(batch, 1)}

    def step(self, controls, state):
        last = state["last"]
        out = []
        for i in range(self.config.block):
            logits = self.table(last) / controls["temperature"][:, None]
            cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)
            index = (cdf < controls["noise"][:, i:i + 1]).sum(dim=-1).clamp(max=self.config.levels - 1)
            last = self.levels_values[index][:, None]
            out.append(last)
        return torch.cat(out, dim=-1)[:, None, :], {"last": last}
