"""WaveGAN (Donahue et al. 2019) trained with WGAN-GP, as in the thesis (§5), including its 4 s variant.

Generator: z [100] -> dense to 16 x (d * 2^(L-1)) -> ReLU -> L transposed convs (kernel 25, stride 4: each one
multiplies the length by 4 and halves the channels; ReLU between, tanh at the end) -> [C, 16 * 4^L].
L = 5 gives 16384 samples (1.024 s at 16 kHz, the original); L = 6 gives 65536 (4.096 s, the thesis's variant with
one more layer and twice the channels at the dense layer: "512d").
Critic: the mirror: L strided convs (LeakyReLU 0.2, phase shuffle n = 2 after every conv but the last) -> dense -> 1.

Latent prior: z ~ Uniform(-1, 1)^100 (as in Donahue et al.'s code); the control `z` has range [-1, 1].

Streaming contract (docs/DESIGN.md §1): stateless; control `z` [100] role latent;
`step({"z": z}, {}) -> (audio [B, C, slice_len], {})`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from instrument.meta import ControlSpec, ModelMeta
from training.streaming import Controls, State, StreamingModel

KERNEL = 25
STRIDE = 4
DENSE_LEN = 16  # the length after the dense layer


@dataclass
class WaveGANConfig:
    name: str = "wavegan-paper"
    kind: str = "wavegan"
    sample_rate: int = 16000
    channels: int = 1  # c: output channels (1 mono, 2 stereo)
    chunk_seconds: float = 1.024  # = slice_len / sample_rate: the data set's chunks are exactly one clip
    batch_size: int = 64
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = 0.0  # WGAN-GP needs none
    checkpoint_every: int = 1000
    sample_seconds: float = 1.024
    # --- architecture ---
    slice_len: int = 16384  # 16 * 4^L samples per clip
    d: int = 64  # model size (channels of the last hidden layer)
    latent_dim: int = 100
    phase_shuffle: int = 2  # n: the critic shifts activations by up to n samples
    # --- WGAN-GP ---
    n_critic: int = 5  # critic updates per generator update
    gp_weight: float = 10.0  # lambda

    @property
    def n_layers(self) -> int:
        n, length = 0, DENSE_LEN
        while length < self.slice_len:
            length *= STRIDE
            n += 1
        if length != self.slice_len or n < 1:
            raise ValueError(f"slice_len must be 16 * 4^L (L >= 1), got {self.slice_len}")
        return n


CONFIGS: dict[str, WaveGANConfig] = {
    "wavegan-paper": WaveGANConfig(),
    "wavegan-paper-4s": WaveGANConfig(name="wavegan-paper-4s", slice_len=65536, chunk_seconds=4.096,
                                      sample_seconds=4.096),
    # What the live engine runs: half the width, one-second clips. Measured through the runtime, one thread: 16 ms
    # per 16384-sample clip (66x real time) vs 32 ms for wavegan-paper and 260 ms per 4 s clip for wavegan-paper-4s.
    "wavegan-live": WaveGANConfig(name="wavegan-live", d=32),
    # Seconds on a CPU, for tests: 4096-sample clips (4 layers), d = 8.
    "wavegan-tiny": WaveGANConfig(name="wavegan-tiny", d=8, slice_len=4096, chunk_seconds=0.256, batch_size=8,
                                  lr=1e-3, checkpoint_every=50, sample_seconds=0.256),
}


def phase_shuffle(x: torch.Tensor, n: int, shifts: torch.Tensor | None = None) -> torch.Tensor:
    """Shift every example of x [B, C, L] in time by its own integer in [-n, n], filling with reflection.

    out[b, :, i] = x[b, :, i - shift_b], with indices outside [0, L) reflected (x[-1] = x[1]).
    `shifts` [B] (int) is drawn uniformly when None.
    """
    if n == 0:
        return x
    B, C, L = x.shape
    if shifts is None:
        shifts = torch.randint(-n, n + 1, (B,), device=x.device)
    padded = F.pad(x, (n, n), mode="reflect")
    index = torch.arange(L, device=x.device)[None, :] + n - shifts[:, None]  # [B, L] into the padded axis
    return padded.gather(2, index[:, None, :].expand(B, C, L))


class Generator(nn.Module):
    def __init__(self, c: WaveGANConfig):
        super().__init__()
        n = c.n_layers
        self.top_channels = c.d * 2 ** (n - 1)
        self.dense = nn.Linear(c.latent_dim, DENSE_LEN * self.top_channels)
        chans = [c.d * 2 ** (n - 1 - i) for i in range(n)] + [c.channels]
        # padding 11 + output_padding 1 make each layer exactly x4 in length: (L-1)*4 - 22 + 25 + 1 = 4L.
        self.upconvs = nn.ModuleList(
            nn.ConvTranspose1d(chans[i], chans[i + 1], KERNEL, STRIDE, padding=11, output_padding=1)
            for i in range(n)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.dense(z).view(z.shape[0], self.top_channels, DENSE_LEN))
        for i, conv in enumerate(self.upconvs):
            x = conv(x)
            x = torch.tanh(x) if i == len(self.upconvs) - 1 else F.relu(x)
        return x


class Critic(nn.Module):
    def __init__(self, c: WaveGANConfig):
        super().__init__()
        n = c.n_layers
        chans = [c.channels] + [c.d * 2 ** i for i in range(n)]
        # padding 11: each layer divides the length by exactly 4.
        self.convs = nn.ModuleList(nn.Conv1d(chans[i], chans[i + 1], KERNEL, STRIDE, padding=11) for i in range(n))
        self.dense = nn.Linear(DENSE_LEN * chans[-1], 1)
        self.shuffle = c.phase_shuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(x), 0.2)
            if i < len(self.convs) - 1:
                x = phase_shuffle(x, self.shuffle)
        return self.dense(x.flatten(1)).squeeze(1)


class Model(StreamingModel):
    kind = "wavegan"

    def __init__(self, config: WaveGANConfig):
        super().__init__(config)
        config.n_layers  # validates slice_len
        self.generator = Generator(config)
        self.critic = Critic(config)

    # --- training (WGAN-GP) -----------------------------------------------------------------------------------
    def sample_latent(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ Uniform(-1, 1)^latent_dim, the prior the generator is trained with."""
        device = self.generator.dense.weight.device
        return torch.rand(batch, self.config.latent_dim, generator=generator).to(device) * 2.0 - 1.0

    def _check_real(self, real: torch.Tensor) -> None:
        c = self.config
        if real.dim() != 3 or real.shape[1] != c.channels or real.shape[2] != c.slice_len:
            raise ValueError(f"expected real audio [B, {c.channels}, {c.slice_len}], got {tuple(real.shape)}")

    def critic_losses(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """The critic's WGAN-GP loss on a batch of real clips [B, C, slice_len] (fakes from fresh z, detached).

        `wasserstein` = E[D(real)] - E[D(fake)] (the critic's estimate of the distance; it maximises it),
        `gp` = E[(|grad D(x_hat)| - 1)^2] on random interpolates, `loss` = -wasserstein + lambda * gp.
        """
        self._check_real(real)
        B = real.shape[0]
        with torch.no_grad():
            fake = self.generator(self.sample_latent(B))
        d_real = self.critic(real).mean()
        d_fake = self.critic(fake).mean()
        alpha = torch.rand(B, 1, 1, device=real.device)
        x_hat = (real + alpha * (fake - real)).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(x_hat).sum(), x_hat, create_graph=True)
        gp = (grad.flatten(1).norm(dim=1) - 1.0).square().mean()
        wasserstein = d_real - d_fake
        loss = -wasserstein + self.config.gp_weight * gp
        return {"loss": loss, "wasserstein": wasserstein.detach(), "gp": gp.detach(),
                "d_real": d_real.detach(), "d_fake": d_fake.detach()}

    def generator_losses(self, batch: int) -> dict[str, torch.Tensor]:
        """The generator's loss for `batch` fresh clips: -E[D(G(z))]."""
        d_fake = self.critic(self.generator(self.sample_latent(batch))).mean()
        return {"loss": -d_fake, "d_fake": d_fake.detach()}

    # --- streaming contract -----------------------------------------------------------------------------------
    def stream_meta(self) -> ModelMeta:
        c = self.config
        controls = [ControlSpec("z", [c.latent_dim], "latent", -1.0, 1.0, 0.0,
                                doc="the latent vector; trained with z ~ Uniform(-1, 1) per dimension")]
        return ModelMeta(kind="wavegan", sample_rate=c.sample_rate, channels=c.channels, block_size=c.slice_len,
                         controls=controls, state=[], latent_size=c.latent_dim, config=self.config_dict(),
                         name=c.name, extra={"latent_prior": "uniform(-1, 1)"})

    def initial_state(self, batch: int) -> State:
        return {}

    def step(self, controls: Controls, state: State) -> tuple[torch.Tensor, State]:
        return self.generator(controls["z"]), {}

    @torch.no_grad()
    def generate(self, seconds: float, batch: int = 1, seed: int = 0, **control_values: float) -> torch.Tensor:
        """Independent clips, each from a fresh z ~ U(-1, 1), concatenated to `seconds`: [B, C, n].
        (Passing z=value fixes every latent dimension to that value instead.)"""
        g = torch.Generator().manual_seed(seed)
        n = int(seconds * self.config.sample_rate)
        clips, total = [], 0
        while total < n:
            z = self.sample_latent(batch, g)
            if "z" in control_values:
                z = torch.full_like(z, float(control_values["z"]))
            audio, _ = self.step({"z": z}, {})
            clips.append(audio)
            total += audio.shape[-1]
        return torch.cat(clips, dim=-1)[..., :n]


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
