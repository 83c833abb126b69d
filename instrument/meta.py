"""The streaming contract's description, shared by every layer (plain Python: no torch, no onnx).

A model in any form (torch module or ONNX graph) is driven the same way:

    state = initial_state(batch)
    audio, state = step(controls, state)      # again and again

`ModelMeta` says everything the engine needs to drive a model without knowing its kind: sample rate, channels,
samples per step, the named state arrays and the named controls with their ranges. It is stored as JSON in the
ONNX file's `metadata_props` under the key `neuralinst` (see docs/DESIGN.md).

ONNX naming (the graph's inputs and outputs):
    inputs : every control by its name, then every state array as `state.<name>`
    outputs: `audio` [B, C, block_size], then every state array as `next_state.<name>`
All arrays are batch first; shapes stored here exclude the batch dimension.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from instrument.errors import UserError

FORMAT_VERSION = 1
METADATA_KEY = "neuralinst"
KINDS = ("wavegan", "vrnn", "samplernn")
STATE_PREFIX = "state."
NEXT_STATE_PREFIX = "next_state."
AUDIO_OUTPUT = "audio"
# Control roles the engine understands; the engine maps knobs to controls by role, never by model kind.
# "grain": how much of the model's own output noise is heard (VRNN: the fraction of the decoder's sigma played).
ROLES = ("temperature", "latent", "latent_offset", "noise", "seed", "grain", "other")
NOISE_DISTRIBUTIONS = ("normal", "uniform")
MAX_ARRAY_ELEMENTS = 50_000_000  # per batch item; anything larger is a corrupt or hostile file
DTYPES = ("float32", "float16", "int64", "int32")


@dataclass
class ControlSpec:
    """A named input of `step`. Shape excludes the batch dimension ([] = one scalar per stream)."""

    name: str
    shape: list[int]
    role: str
    minimum: float = -1.0
    maximum: float = 1.0
    default: float = 0.0
    dtype: str = "float32"
    distribution: str | None = None  # for role "noise": how the runtime draws it from its seeded generator
    doc: str = ""


@dataclass
class StateSpec:
    """A named state array (batch first). Its initial value is zeros unless `initial` says otherwise."""

    name: str
    shape: list[int]
    dtype: str = "float32"


@dataclass
class ModelMeta:
    kind: str
    sample_rate: int
    channels: int
    block_size: int  # samples per step call, per channel
    controls: list[ControlSpec]
    state: list[StateSpec]
    latent_size: int = 0
    quantization: dict[str, Any] | None = None  # e.g. {"levels": 256, "scheme": "mu-law"}
    config: dict[str, Any] = field(default_factory=dict)  # the training config, for the record
    training_data: dict[str, Any] = field(default_factory=dict)  # a summary of the data set's manifest
    name: str = ""
    format_version: int = FORMAT_VERSION
    precision: str = "float32"  # "float32" | "float16" (the graph's float inputs and outputs)
    extra: dict[str, Any] = field(default_factory=dict)

    # --- lookup helpers -------------------------------------------------------------------------------------
    def control(self, name: str) -> ControlSpec:
        for c in self.controls:
            if c.name == name:
                return c
        raise KeyError(name)

    def controls_with_role(self, role: str) -> list[ControlSpec]:
        return [c for c in self.controls if c.role == role]

    def input_names(self) -> list[str]:
        return [c.name for c in self.controls] + [STATE_PREFIX + s.name for s in self.state]

    def output_names(self) -> list[str]:
        return [AUDIO_OUTPUT] + [NEXT_STATE_PREFIX + s.name for s in self.state]

    # --- (de)serialisation ----------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "ModelMeta":
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{source}: its neuralinst metadata is not valid JSON ({e.msg}).") from None
        if not isinstance(raw, dict):
            raise UserError(f"{source}: its neuralinst metadata is not a JSON object.")
        return cls.from_dict(raw, source)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "model") -> "ModelMeta":
        version = raw.get("format_version")
        if not isinstance(version, int):
            raise UserError(f"{source}: its metadata has no format version; re-export it with `neuralinst export`.")
        if version > FORMAT_VERSION:
            raise UserError(
                f"{source}: metadata format version {version} is newer than this neuralinst supports "
                f"({FORMAT_VERSION}); upgrade neuralinst."
            )
        try:
            controls = [ControlSpec(**c) for c in raw["controls"]]
            state = [StateSpec(**s) for s in raw["state"]]
            fields = {k: v for k, v in raw.items() if k not in ("controls", "state")}
            meta = cls(controls=controls, state=state, **fields)
        except (KeyError, TypeError) as e:
            raise UserError(f"{source}: its metadata is incomplete or has unknown fields ({e}).") from None
        meta.validate(source)
        return meta

    def validate(self, source: str = "model") -> None:
        """Refuse anything the engine could not drive safely, with one sentence naming the problem."""

        def bad(msg: str):
            raise UserError(f"{source}: {msg}.")

        if self.kind not in KINDS:
            bad(f"unknown model kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        if not (isinstance(self.sample_rate, int) and 1000 <= self.sample_rate <= 384000):
            bad(f"sample rate {self.sample_rate!r} is out of range")
        if not (isinstance(self.channels, int) and 1 <= self.channels <= 8):
            bad(f"channel count {self.channels!r} is out of range")
        if not (isinstance(self.block_size, int) and 1 <= self.block_size <= 10_000_000):
            bad(f"block size {self.block_size!r} is out of range")
        names = set()
        for spec in [*self.controls, *self.state]:
            if spec.name in names:
                bad(f"the name {spec.name!r} is used twice")
            names.add(spec.name)
            if spec.dtype not in DTYPES:
                bad(f"{spec.name!r} has unsupported dtype {spec.dtype!r}")
            if not isinstance(spec.shape, list) or not all(isinstance(d, int) and d >= 1 for d in spec.shape):
                bad(f"{spec.name!r} has an invalid shape {spec.shape!r}")
            if math.prod(spec.shape) > MAX_ARRAY_ELEMENTS:
                bad(f"{spec.name!r} has an absurd shape {spec.shape} ({math.prod(spec.shape):.3g} elements)")
        for c in self.controls:
            if c.role not in ROLES:
                bad(f"control {c.name!r} has unknown role {c.role!r}")
            if c.role == "noise" and c.distribution not in NOISE_DISTRIBUTIONS:
                bad(f"noise control {c.name!r} needs a distribution ({', '.join(NOISE_DISTRIBUTIONS)})")
            if not (c.minimum <= c.default <= c.maximum) and c.role not in ("noise", "seed"):
                bad(f"control {c.name!r} has default {c.default} outside [{c.minimum}, {c.maximum}]")
