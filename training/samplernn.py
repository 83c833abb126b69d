"""SampleRNN (Mehri et al. 2017) as in the thesis (deepsound-project variant, §3.2) and as Dadabots play it.

Tiers, bottom-up, as in deepsound's `frame_sizes` (16, 4):

    tier 1 (top)   reads frames of 16*4 = 64 samples, runs `n_rnn` stacked GRUs once per 64 samples and
                   upsamples (transposed 1-D conv, kernel = stride = 4) to 4 conditioning vectors for tier 0;
    tier 0         reads frames of 16 samples, adds the conditioning from above to its input, runs its GRUs
                   once per 16 samples and upsamples (kernel = stride = 16) to one vector per sample;
    sample level   embeds the previous 16 quantised samples, a 1-D conv (kernel 16) maps them to `dim`, the
                   conditioning is added, then an MLP (1x1 convs) gives q logits: a q-way softmax, NLL loss.

Any number of frame tiers works (`frame_sizes` = (f0, f1, ..., fn)); tier i reads frames of f0*...*fi samples.
Frame tiers read the quantised samples rescaled to [-2, 2) (deepsound's `2 * linear_dequantize`; for mu-law that
is the companded value). Learned initial states h0 (and c0 for LSTM) per tier.

Dadabots variant: one frame tier (2-tier SampleRNN), LSTM, 5 layers, embedding 256, skip connections (every RNN
layer's output goes through its own linear map and the maps are summed before the upsampling), weight norm, and a
random h0 at generation (`h0_random_std`, given to the runtime in `meta.extra["initial_state_noise_std"]`).

Streaming (docs/DESIGN.md §1): one `step` generates one top-tier frame (prod(frame_sizes) samples: 64 for the
thesis tiers 16/4, 16 for Dadabots' single tier 16) with the whole per-sample loop unrolled at trace time, so
`torch.onnx.export(..., dynamo=False)` gives one graph. State: every tier's RNN state (`tier{i}.h`, `tier{i}.c`
for LSTM) and `samples`, the last prod(frame_sizes) quantised levels (float32). Because a step is exactly one
top-tier frame, no conditioning vector is ever left unconsumed between calls (every upper-tier vector is used
inside the call that made it), so none is kept in state.

Sampling: inverse-CDF with one uniform number per generated sample (`noise` [block], role noise, uniform):
    p = softmax(logits / temperature); level = #{k : cdf_k < u * cdf_last}
(the unnormalised cumulative sum of exp(logits/T - max)). Chosen over Gumbel-max because the noise is q times
smaller (the runtime draws 16k numbers per second, not 4M) and a float difference between executors can move the
result only when u lies within ~1e-6 of a CDF boundary, and then only to the adjacent level.

Proof of correctness: `step_teacher_forced` feeds real audio through the streaming path; its logits equal the
full-sequence `forward` (tests/test_samplernn.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from instrument.meta import ControlSpec, ModelMeta, StateSpec
from training.streaming import Controls, State, StreamingModel


@dataclass
class SampleRNNConfig:
    name: str = "samplernn-paper"
    kind: str = "samplernn"
    sample_rate: int = 16000
    channels: int = 1
    chunk_seconds: float = 8.0  # thesis: 8 s chunks, cut into `tbptt_samples` pieces for TBPTT
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # deepsound and Dadabots clip gradients at 1
    checkpoint_every: int = 1000
    sample_seconds: float = 4.0
    # --- architecture (thesis table §3.2) ---
    frame_sizes: tuple[int, ...] = (16, 4)  # bottom-up: tier i reads frames of prod(frame_sizes[:i+1]) samples
    n_rnn: int = 3  # stacked RNN layers per frame tier
    dim: int = 1024  # RNN state size and sample-level MLP width
    rnn: str = "gru"  # "gru" | "lstm"
    q_levels: int = 256
    quantization: str = "linear"  # "linear" | "mu-law"
    embedding_size: int = 256  # deepsound: q_levels
    mlp_hidden_layers: int = 1  # dim->dim layers between the input conv and the output layer
    skip_connections: bool = False
    weight_norm: bool = True
    learn_h0: bool = True
    h0_random_std: float = 0.0  # > 0: the generator adds N(0, std^2) to h0 (Dadabots' randomised h0)
    tbptt_samples: int = 1024  # thesis "sequence length"


CONFIGS: dict[str, SampleRNNConfig] = {
    # The thesis / deepsound set-up, exactly: tiers 16/4, 3 GRUs of 1024, q=256 linear, learned h0, lr 1e-3, b=128.
    "samplernn-paper": SampleRNNConfig(),
    # Dadabots (Carr & Zukowski): 2-tier, LSTM, 5 layers, embedding 256, dim 1024, skip connections, weight norm,
    # randomised h0, 256 linear levels, 16 kHz (32 kHz via override sample_rate=32000). MLP as in their
    # two_tier.py (three dim-wide layers before the output).
    "samplernn-dadabots": SampleRNNConfig(
        name="samplernn-dadabots", frame_sizes=(16,), n_rnn=5, rnn="lstm", embedding_size=256,
        mlp_hidden_layers=2, skip_connections=True, weight_norm=True, learn_h0=False, h0_random_std=0.5,
    ),
    # Sized for the native sample loop (instrument/native) at >= 1x real time on ONE core, with margin on a busy
    # machine: tiers 16/4, one GRU of 256 per tier (deepsound's default n_rnn; the thesis used 3), embedding 256,
    # one hidden MLP layer of 256, q=256 mu-law (finer steps in quiet passages). 3.4 M parameters, ~235 k
    # multiply-adds per sample. A second GRU layer per tier adds ~30 k multiply-adds but 2 MB more weights per
    # frame, which under load fall out of cache: measured on one pinned core of this 2-core EPYC at load 12,
    # CPU-time median 1.1x real time with 2 layers vs 2.0x with 1 (best 1.6x vs 2.5x). This config, load 7.4
    # (benchmarks/results/samplernn_native.json): native 2.0x by CPU time (0.97x wall clock on the shared core),
    # float16 matrices 2.2x (1.27x), ONNX graph 0.49x (0.30x), torch eager 0.09x (0.05x).
    "samplernn-live": SampleRNNConfig(
        name="samplernn-live", frame_sizes=(16, 4), n_rnn=1, dim=256, quantization="mu-law", batch_size=64,
    ),
    # Seconds on a CPU, for tests: three frame tiers (8, 2, 2 -> 32-sample top frames), tiny widths.
    "samplernn-tiny": SampleRNNConfig(
        name="samplernn-tiny", frame_sizes=(8, 2, 2), n_rnn=2, dim=32, embedding_size=16, q_levels=256,
        quantization="mu-law", batch_size=4, chunk_seconds=1.0, tbptt_samples=256, checkpoint_every=50,
        sample_seconds=0.5,
    ),
}


# --- quantisation ---------------------------------------------------------------------------------------------
def quantize(x: torch.Tensor, q_levels: int, scheme: str) -> torch.Tensor:
    """float in [-1, 1] -> int64 level in [0, q)."""
    x = x.clamp(-1.0, 1.0)
    if scheme == "linear":
        return ((x + 1.0) * (q_levels / 2)).floor().clamp(0, q_levels - 1).long()
    if scheme == "mu-law":
        mu = q_levels - 1
        y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
        return ((y + 1.0) / 2.0 * mu + 0.5).floor().clamp(0, mu).long()
    raise ValueError(f"unknown quantisation {scheme!r}")


def dequantize(level: torch.Tensor, q_levels: int, scheme: str) -> torch.Tensor:
    """level (int or float tensor) -> float in [-1, 1]."""
    level = level.float()
    if scheme == "linear":
        return level / (q_levels / 2) - 1.0
    if scheme == "mu-law":
        mu = q_levels - 1
        y = 2.0 * level / mu - 1.0
        return torch.sign(y) * (torch.pow(1.0 + mu, y.abs()) - 1.0) / mu
    raise ValueError(f"unknown quantisation {scheme!r}")


def _frame_input(level: torch.Tensor, q_levels: int) -> torch.Tensor:
    """What frame tiers read: the level rescaled to [-2, 2) (deepsound's 2 * linear_dequantize)."""
    return 2.0 * (level.float() / (q_levels / 2) - 1.0)


def _maybe_wn(module: nn.Module, on: bool) -> nn.Module:
    return _weight_norm(module) if on else module


def _lecun_uniform_(w: torch.Tensor) -> None:
    fan_in = w.shape[1] * (w[0, 0].numel() if w.dim() > 2 else 1)
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(w, -bound, bound)


def _without_tracing(fn):
    """Run `fn` outside any active torch.jit trace, so its result enters the graph as a constant."""
    saved = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        return fn()
    finally:
        torch._C._set_tracing_state(saved)


# --- modules --------------------------------------------------------------------------------------------------
class FrameTier(nn.Module):
    """One frame-level tier: input expansion, stacked RNN layers (optionally with skip sums), learned upsampling."""

    def __init__(self, c: SampleRNNConfig, frame_size: int, n_frame_samples: int):
        super().__init__()
        self.frame_size, self.n_frame_samples = frame_size, n_frame_samples
        self.dim, self.n_rnn, self.lstm = c.dim, c.n_rnn, c.rnn == "lstm"
        if c.rnn not in ("gru", "lstm"):
            raise ValueError(f"unknown rnn {c.rnn!r}")
        expand = nn.Linear(n_frame_samples, c.dim)  # deepsound: Conv1d(n_frame_samples, dim, kernel_size=1)
        nn.init.kaiming_uniform_(expand.weight)
        nn.init.zeros_(expand.bias)
        self.expand = _maybe_wn(expand, c.weight_norm)
        cell = nn.LSTM if self.lstm else nn.GRU
        gates = 4 if self.lstm else 3
        self.rnns = nn.ModuleList()
        for _ in range(c.n_rnn):  # one module per layer so skip connections can read every layer's output
            rnn = cell(c.dim, c.dim, 1, batch_first=True)
            for g in range(gates):  # deepsound: LeCun-uniform input weights, orthogonal recurrent weights
                _lecun_uniform_(rnn.weight_ih_l0.data[g * c.dim:(g + 1) * c.dim])
                nn.init.orthogonal_(rnn.weight_hh_l0.data[g * c.dim:(g + 1) * c.dim])
            nn.init.zeros_(rnn.bias_ih_l0)
            nn.init.zeros_(rnn.bias_hh_l0)
            self.rnns.append(rnn)
        self.skips = nn.ModuleList(
            [_maybe_wn(nn.Linear(c.dim, c.dim, bias=(i == 0)), c.weight_norm) for i in range(c.n_rnn)]
            if c.skip_connections else []
        )
        up = nn.ConvTranspose1d(c.dim, c.dim, frame_size, stride=frame_size, bias=False)
        bound = math.sqrt(6.0 / c.dim)
        nn.init.uniform_(up.weight, -bound, bound)
        self.upsample = _maybe_wn(up, c.weight_norm)
        self.upsample_bias = nn.Parameter(torch.zeros(c.dim, frame_size))  # deepsound: one bias per position
        h0 = torch.zeros(c.n_rnn, c.dim)
        if c.learn_h0:
            self.h0 = nn.Parameter(h0)
            self.c0 = nn.Parameter(h0.clone()) if self.lstm else None
        else:
            self.register_buffer("h0", h0)
            self.register_buffer("c0", h0.clone() if self.lstm else None)

    def _merge(self, outs: list[torch.Tensor]) -> torch.Tensor:
        if not self.skips:
            return outs[-1]
        return sum(skip(o) for skip, o in zip(self.skips, outs))

    def forward(self, frames, cond, h, c):
        """frames [B, N, n_frame_samples], cond [B, N, dim] | None, h/c [B, n_rnn, dim] -> [B, N*fs, dim], h, c."""
        x = self.expand(frames)
        if cond is not None:
            x = x + cond
        outs, hs, cs = [], [], []
        for layer, rnn in enumerate(self.rnns):
            h_l = h[:, layer].unsqueeze(0).contiguous()
            if self.lstm:
                x, (h_l, c_l) = rnn(x, (h_l, c[:, layer].unsqueeze(0).contiguous()))
                cs.append(c_l[0])
            else:
                x, h_l = rnn(x, h_l)
            hs.append(h_l[0])
            outs.append(x)
        y = self._merge(outs)  # [B, N, dim]
        up = self.upsample(y.transpose(1, 2))  # [B, dim, N*fs]
        up = up + self.upsample_bias.repeat(1, y.shape[1])
        return up.transpose(1, 2), torch.stack(hs, 1), (torch.stack(cs, 1) if self.lstm else None)

    def step(self, frame, cond, h, c):
        """One frame: frame [B, n_frame_samples], cond [B, dim] | None -> [B, fs, dim], h, c (cell math by hand)."""
        x = self.expand(frame)
        if cond is not None:
            x = x + cond
        outs, hs, cs = [], [], []
        for layer, rnn in enumerate(self.rnns):
            h_l = h[:, layer]
            gi = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)
            gh = F.linear(h_l, rnn.weight_hh_l0, rnn.bias_hh_l0)
            if self.lstm:
                i, f, g, o = (gi + gh).chunk(4, dim=-1)
                c_l = torch.sigmoid(f) * c[:, layer] + torch.sigmoid(i) * torch.tanh(g)
                h_l = torch.sigmoid(o) * torch.tanh(c_l)
                cs.append(c_l)
            else:
                ir, iz, i_n = gi.chunk(3, dim=-1)
                hr, hz, h_n = gh.chunk(3, dim=-1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                n = torch.tanh(i_n + r * h_n)
                h_l = (1.0 - z) * n + z * h_l
            hs.append(h_l)
            outs.append(h_l)
            x = h_l
        y = self._merge(outs)  # [B, dim]
        w = self.upsample.weight  # [dim_in, dim_out, fs]
        up = torch.einsum("bi,iok->bko", y, w) + self.upsample_bias.t()
        return up, torch.stack(hs, 1), (torch.stack(cs, 1) if self.lstm else None)


class SampleMLP(nn.Module):
    """Embedding of the previous `frame_size` levels -> conv (kernel frame_size) + conditioning -> MLP -> q logits."""

    def __init__(self, c: SampleRNNConfig):
        super().__init__()
        self.frame_size, self.q = c.frame_sizes[0], c.q_levels
        self.embedding = nn.Embedding(c.q_levels, c.embedding_size)
        inp = nn.Conv1d(c.embedding_size, c.dim, c.frame_sizes[0], bias=False)
        nn.init.kaiming_uniform_(inp.weight)
        self.input = _maybe_wn(inp, c.weight_norm)
        self.hidden = nn.ModuleList()
        for _ in range(c.mlp_hidden_layers):
            lin = nn.Linear(c.dim, c.dim)
            nn.init.kaiming_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
            self.hidden.append(_maybe_wn(lin, c.weight_norm))
        out = nn.Linear(c.dim, c.q_levels)
        _lecun_uniform_(out.weight)
        nn.init.zeros_(out.bias)
        self.output = _maybe_wn(out, c.weight_norm)
        self._tables: torch.Tensor | None = None
        self._tables_key: tuple | None = None

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        for lin in self.hidden:
            x = F.relu(lin(x))
        return self.output(x)

    def forward(self, levels: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """levels [B, T + frame_size - 1] int64, cond [B, T, dim] -> logits [B, T, q]."""
        e = self.embedding(levels).transpose(1, 2)  # [B, emb, T + fs - 1]
        return self._head(self.input(e).transpose(1, 2) + cond)

    def input_tables(self) -> torch.Tensor:
        """[frame_size, q, dim]: table[k][level] = conv tap k applied to embedding(level) (WaveRNN's trick).

        Cached while the weights are unchanged; computed outside any trace so an exported graph holds it as a
        constant instead of recomputing it on every call."""
        params = [p for n, p in self.named_parameters() if n.startswith(("embedding", "input"))]
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._tables is None or key != self._tables_key:
            def build():
                with torch.no_grad():
                    w = self.input.weight  # [dim, emb, fs]
                    return torch.einsum("qe,dek->kqd", self.embedding.weight, w).contiguous()
            self._tables, self._tables_key = _without_tracing(build), key
        return self._tables

    def step(self, prev: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """prev [B, frame_size] int64 levels, cond [B, dim] -> logits [B, q]."""
        tables = self.input_tables()
        offsets = torch.arange(self.frame_size, device=prev.device) * self.q
        rows = tables.reshape(-1, tables.shape[-1])[prev + offsets]  # [B, fs, dim]
        return self._head(rows.sum(1) + cond)


class Model(StreamingModel):
    kind = "samplernn"

    def __init__(self, config: SampleRNNConfig):
        super().__init__(config)
        c = config
        if c.channels != 1:
            raise ValueError("SampleRNN here is mono (channels=1)")
        sizes = [math.prod(c.frame_sizes[: i + 1]) for i in range(len(c.frame_sizes))]
        self.tiers = nn.ModuleList(FrameTier(c, fs, n) for fs, n in zip(c.frame_sizes, sizes))
        self.mlp = SampleMLP(c)
        self.lookback = sizes[-1]  # samples of history the model reads: one top-tier frame
        self.block_size = sizes[-1]  # samples per `step`: one top-tier frame
        self.tbptt_samples = c.tbptt_samples
        if c.tbptt_samples % self.block_size:
            raise ValueError(f"tbptt_samples must be a multiple of the top frame ({self.block_size})")

    # --- quantisation helpers -------------------------------------------------------------------------------
    def quantize(self, x):
        return quantize(x, self.config.q_levels, self.config.quantization)

    def dequantize(self, level):
        return dequantize(level, self.config.q_levels, self.config.quantization)

    def silence_level(self) -> int:
        return int(self.quantize(torch.zeros(1)).item())

    def streamed_matrices(self) -> list[torch.Tensor]:
        """The weight matrices the native loop reads on every frame or sample (what --half stores as float16)."""
        out = []
        for tier in self.tiers:
            for rnn in tier.rnns:
                out += [rnn.weight_ih_l0, rnn.weight_hh_l0]
            out += [skip.weight for skip in tier.skips] + [tier.upsample.weight]
        return out + [lin.weight for lin in self.mlp.hidden] + [self.mlp.output.weight]

    def _fold_weight_norm_(self) -> None:
        from torch.nn.utils import parametrize

        for module in list(self.modules()):
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)

    @torch.no_grad()
    def round_weights_to_half_(self) -> "Model":
        """For export with float16 native weights: fold weight normalisation into plain weights, then round every
        streamed matrix to the nearest float16 value (still stored as float32). The ONNX graph and the native loop
        exported from the rounded model then compute the same thing. Relative change per weight <= 2^-11.
        An export-time transform: the module layout no longer matches a training checkpoint. Never call it on a
        copy.deepcopy of a model still in use: the copies share weight norm's parametrised classes, and removing
        the parametrisation from one breaks the other (load a second model instead)."""
        self._fold_weight_norm_()
        for w in self.streamed_matrices():
            if w.abs().max() > 65504:
                raise ValueError("a weight exceeds the float16 range; this model cannot use float16 weights")
            w.copy_(w.half().float())
        self.mlp._tables = None
        return self

    @torch.no_grad()
    def round_weights_to_int8_(self) -> "Model":
        """For export with int8 native weights: fold weight normalisation, then put every streamed matrix on the
        grid the native loop stores: per row of the loop's layout (an output unit; for the upsampling, an output
        unit of one of its frame_size positions), w = q * scale with q an integer in [-127, 127] and scale =
        max|w| / 127, computed in float32 exactly as instrument.native.samplernn.quantize_rows does. The ONNX graph
        and the native loop exported from the rounded model then compute the same thing (up to the loop's 14-bit
        activation step). Same cautions as round_weights_to_half_."""
        self._fold_weight_norm_()
        upsampling = {id(tier.upsample.weight) for tier in self.tiers}
        for w in self.streamed_matrices():
            over = 0 if id(w) in upsampling else w.dim() - 1  # ConvTranspose1d [in, out, k] reads along `in`
            peak = w.abs().amax(dim=over, keepdim=True)
            scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
            w.copy_(torch.round(w / scale).clamp(-127, 127) * scale)
        self.mlp._tables = None
        return self

    # --- training -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Full sequence, teacher forced. x [B, 1, T] float (T a multiple of the top frame).

        Returns logits [B, T, q] predicting each sample of x, its target levels [B, T], and the state after x.
        With state=None the history is silence and the RNN states are h0 (the start of a chunk)."""
        B, _, T = x.shape
        if T % self.block_size:
            raise ValueError(f"sequence length {T} is not a multiple of the top frame {self.block_size}")
        if state is None:
            state = self.initial_state(B)
        target = self.quantize(x[:, 0])
        hist = state["samples"].long()
        seq = torch.cat([hist, target], dim=1)  # [B, L + T]
        inp = seq[:, :-1]  # sample t of x is predicted from everything before it
        L, q = self.lookback, self.config.q_levels
        cond = None
        new_state: State = {}
        for i in reversed(range(len(self.tiers))):
            tier = self.tiers[i]
            n = tier.n_frame_samples
            frames = inp[:, L - n: L - n + T].reshape(B, T // n, n)
            h, c = state[f"tier{i}.h"], state.get(f"tier{i}.c")
            cond, h, c = tier(_frame_input(frames, q), cond, h, c)
            new_state[f"tier{i}.h"] = h
            if c is not None:
                new_state[f"tier{i}.c"] = c
        fs0 = self.config.frame_sizes[0]
        logits = self.mlp(inp[:, L - fs0:], cond)
        new_state["samples"] = seq[:, -L:].float()
        return logits, target, {s.name: new_state[s.name] for s in self._state_specs()}

    def losses(self, x: torch.Tensor, state: State | None = None) -> tuple[dict[str, torch.Tensor], State]:
        logits, target, new_state = self(x, state)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        metrics = {"loss": nll, "bits_per_sample": nll / math.log(2.0)}
        return metrics, {k: v.detach() for k, v in new_state.items()}

    # --- streaming ------------------------------------------------------------------------------------------
    def _state_specs(self) -> list[StateSpec]:
        c = self.config
        specs = []
        for i, tier in enumerate(self.tiers):
            specs.append(StateSpec(f"tier{i}.h", [c.n_rnn, c.dim]))
            if tier.lstm:
                specs.append(StateSpec(f"tier{i}.c", [c.n_rnn, c.dim]))
        specs.append(StateSpec("samples", [self.lookback]))
        return specs

    @torch.no_grad()
    def _initial_values(self) -> dict[str, torch.Tensor]:
        """One batch item's initial state: learned (or zero) h0/c0 and a history of silence."""
        out = {}
        for i, tier in enumerate(self.tiers):
            out[f"tier{i}.h"] = tier.h0.detach().clone()
            if tier.lstm:
                out[f"tier{i}.c"] = tier.c0.detach().clone()
        out["samples"] = torch.full((self.lookback,), float(self.silence_level()), device=self.tiers[0].h0.device)
        return out

    def stream_meta(self) -> ModelMeta:
        c = self.config
        controls = [
            ControlSpec("temperature", [], "temperature", minimum=0.05, maximum=2.0, default=1.0,
                        doc="softmax temperature of the sample-level output"),
            ControlSpec("noise", [self.block_size], "noise", minimum=0.0, maximum=1.0, default=0.5,
                        distribution="uniform", doc="one uniform number per generated sample (inverse-CDF)"),
        ]
        extra = {"initial_state": {k: v.flatten().tolist() for k, v in self._initial_values().items()},
                 "sampling": "inverse-cdf", "frame_sizes": list(c.frame_sizes)}
        if c.h0_random_std > 0:
            extra["initial_state_noise_std"] = {s.name: c.h0_random_std for s in self._state_specs()
                                                if s.name != "samples"}
        return ModelMeta(kind="samplernn", sample_rate=c.sample_rate, channels=1, block_size=self.block_size,
                         controls=controls, state=self._state_specs(),
                         quantization={"levels": c.q_levels, "scheme": c.quantization},
                         config=self.config_dict(), name=c.name, extra=extra)

    def initial_state(self, batch: int, generator: torch.Generator | None = None) -> State:
        self.mlp.input_tables()  # prepare the cached tables before any trace of `step`
        out = {}
        for k, v in self._initial_values().items():
            v = v.unsqueeze(0).repeat(batch, *([1] * v.dim()))
            if generator is not None and self.config.h0_random_std > 0 and k != "samples":
                v = v + self.config.h0_random_std * torch.randn(v.shape, generator=generator).to(v.device)
            out[k] = v
        return out

    def _run_frame(self, state: State, temperature=None, noise=None, forced=None):
        """One top-tier frame through every tier, sample by sample (unrolled: `block_size` is fixed).

        Either samples (temperature [B], noise [B, block]) or teacher-forces (forced [B, block] levels).
        Returns levels [B, block], logits [B, block, q], new state."""
        q = self.config.q_levels
        B = state["samples"].shape[0]
        cols = list(state["samples"].long().unbind(1))  # history, one [B] tensor per sample, oldest first
        new_state: State = {}
        levels, logits = [], []
        fs0 = self.config.frame_sizes[0]

        def window(n):
            return torch.stack(cols[-n:], dim=1)

        def run(i, cond):
            tier = self.tiers[i]
            h, c = state[f"tier{i}.h"], state.get(f"tier{i}.c")
            if f"tier{i}.h" in new_state:  # a lower tier runs several frames per call
                h, c = new_state[f"tier{i}.h"], new_state.get(f"tier{i}.c")
            up, h, c = tier.step(_frame_input(window(tier.n_frame_samples), q), cond, h, c)
            new_state[f"tier{i}.h"] = h
            if c is not None:
                new_state[f"tier{i}.c"] = c
            for j in range(tier.frame_size):
                if i > 0:
                    run(i - 1, up[:, j])
                    continue
                lg = self.mlp.step(window(fs0), up[:, j])
                t = len(levels)
                if forced is not None:
                    lvl = forced[:, t]
                else:
                    z = lg / temperature.reshape(B, 1).clamp_min(1e-3)
                    cdf = torch.cumsum(torch.exp(z - z.max(dim=-1, keepdim=True).values), dim=-1)
                    lvl = (cdf < noise[:, t:t + 1] * cdf[:, -1:]).long().sum(-1).clamp(max=q - 1)
                levels.append(lvl)
                logits.append(lg)
                cols.append(lvl)

        run(len(self.tiers) - 1, None)
        new_state["samples"] = window(self.lookback).float()
        ordered = {s.name: new_state[s.name] for s in self._state_specs()}
        return torch.stack(levels, 1), torch.stack(logits, 1), ordered

    def step(self, controls: Controls, state: State) -> tuple[torch.Tensor, State]:
        levels, _, new_state = self._run_frame(state, temperature=controls["temperature"], noise=controls["noise"])
        return self.dequantize(levels).unsqueeze(1), new_state

    def step_teacher_forced(self, x_block: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The streaming path fed real audio x_block [B, 1, block] instead of its own samples -> logits [B, block, q]."""
        _, logits, new_state = self._run_frame(state, forced=self.quantize(x_block[:, 0]))
        return logits, new_state
