"""VRNN: the Variational Recurrent Neural Network (Chung et al. 2015) on raw audio frames, as in the thesis (§4).

One time step handles one frame of `frame` samples (200 at 16 kHz = 12.5 ms), normalised by the data set's global
mean/std. With h the GRU state before the frame:

    prior      p(z_t | h)         = N(mu_p, sigma_p)         phi_prior(h)
    encoder    q(z_t | x_t, h)    = N(mu_q, sigma_q)         phi_enc([phi_x(x_t), h])       (training only)
    decoder    p(x_t | z_t, h)    = N(mu_x, sigma_x)         phi_dec([phi_z(z_t), h])
    recurrence h' = GRU([phi_x(x_t), phi_z(z_t)], h)

Training minimises KLD(q || p) + Gaussian NLL(x_t), with z_t drawn from q by re-parameterisation.
Generation draws z_t from the prior, x_t from the decoder, and feeds x_t back in place of the data.

Streaming contract (see docs/DESIGN.md §1): state `h` [h_dim]; controls `temperature` (scales both sampling sigmas;
0 = the means, which is what the original implementation plays), `z_offset` [z_dim] (added to z: the performer's
latent knobs), `grain` (the fraction of the decoder's sigma that is heard: 0 plays the decoder mean, 1 the drawn
frame), `eps_z` and `eps_x` (standard normal noise, drawn by the runtime). One `step` = `frames_per_step` frames,
audio [B, 1, frames_per_step * frame] in [-1, 1]. As in the thesis, the frame fed back is always the one drawn from
the decoder, and by default the decoder mean is played (`play_mean`: grain defaults to 0; without it, to 1), so
eps_x shapes where the stream goes, not added hiss. The mean of an uncertain decoder is quiet (it averages over
what the frame might be: vrnn-piano at 4,909 steps plays 20 dB below its data); grain lets the performer bring the
drawn detail back, at the price of the decoder's per-sample noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from instrument.meta import ControlSpec, ModelMeta, StateSpec
from training.streaming import Controls, State, StreamingModel

LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class VRNNConfig:
    name: str = "vrnn-paper"
    kind: str = "vrnn"
    sample_rate: int = 16000
    channels: int = 1
    chunk_seconds: float = 0.5  # the thesis trains on 0.5 s chunks (40 frames)
    batch_size: int = 128
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.1  # the thesis clips the gradient norm at 0.1 (and still saw explosions on some data)
    checkpoint_every: int = 1000
    sample_seconds: float = 4.0
    # --- architecture (thesis table §4.2; z_dim and the layer counts from Chung et al.'s Blizzard set-up) ---
    frame: int = 200  # samples per time step
    h_dim: int = 2000  # GRU state
    x_feat_dim: int = 600  # phi_x
    dec_dim: int = 600  # phi_dec
    z_feat_dim: int = 500  # phi_z
    enc_dim: int = 500  # phi_enc
    prior_dim: int = 500  # phi_prior
    z_dim: int = 200
    mlp_layers: int = 4  # hidden layers of phi_x, phi_enc, phi_prior and phi_dec (phi_z has one)
    min_std: float = 1e-3  # floor on every predicted sigma (normalised units): keeps the NLL finite
    frames_per_step: int = 1  # frames generated per `step` call (k > 1 unrolls k frames into one graph)
    # Play the decoder mean and feed the drawn sample back (the thesis, after the original implementation), or
    # play the drawn sample itself (adds the decoder's sigma as broadband noise to what is heard): the default of
    # the `grain` control (0 or 1), which the performer moves in between.
    play_mean: bool = True


CONFIGS: dict[str, VRNNConfig] = {
    "vrnn-paper": VRNNConfig(),
    # What the live engine runs: a quarter of the paper's state. Measured through onnxruntime, one thread, batch 1:
    # 0.23 ms per 200-sample frame (54x real time) vs 5.5 ms (2.3x) for vrnn-paper, on this 2-core machine.
    "vrnn-live": VRNNConfig(
        name="vrnn-live", h_dim=512, x_feat_dim=256, dec_dim=256, z_feat_dim=256, enc_dim=256, prior_dim=256,
        z_dim=64, mlp_layers=2, batch_size=64,
    ),
    # Seconds on a CPU: for tests.
    "vrnn-tiny": VRNNConfig(
        name="vrnn-tiny", h_dim=64, x_feat_dim=48, dec_dim=48, z_feat_dim=32, enc_dim=32, prior_dim=32, z_dim=8,
        mlp_layers=1, batch_size=8, lr=3e-3, grad_clip=1.0, checkpoint_every=50, sample_seconds=1.0,
    ),
}


def mlp(n_in: int, n_hidden: int, layers: int) -> nn.Sequential:
    """`layers` fully connected ReLU layers of width n_hidden."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(n_in if i == 0 else n_hidden, n_hidden), nn.ReLU()]
    return nn.Sequential(*mods)


class GaussianHead(nn.Module):
    """Mean and sigma (softplus + floor) of a diagonal Gaussian."""

    def __init__(self, n_in: int, n_out: int, min_std: float):
        super().__init__()
        self.mean = nn.Linear(n_in, n_out)
        self.std = nn.Linear(n_in, n_out)
        self.min_std = min_std

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(h), F.softplus(self.std(h)) + self.min_std


def gaussian_kld(mq, sq, mp, sp) -> torch.Tensor:
    """KL(N(mq, sq) || N(mp, sp)), element-wise."""
    return torch.log(sp / sq) + (sq.square() + (mq - mp).square()) / (2.0 * sp.square()) - 0.5


def gaussian_nll(x, m, s) -> torch.Tensor:
    """-log N(x; m, s), element-wise."""
    return 0.5 * LOG_2PI + torch.log(s) + (x - m).square() / (2.0 * s.square())


class Model(StreamingModel):
    kind = "vrnn"

    def __init__(self, config: VRNNConfig):
        super().__init__(config)
        c = config
        if c.channels != 1:
            raise ValueError("VRNN models mono audio (channels = 1)")
        self.phi_x = mlp(c.frame, c.x_feat_dim, c.mlp_layers)
        self.phi_z = mlp(c.z_dim, c.z_feat_dim, 1)
        self.phi_enc = mlp(c.x_feat_dim + c.h_dim, c.enc_dim, c.mlp_layers)
        self.enc = GaussianHead(c.enc_dim, c.z_dim, c.min_std)
        self.phi_prior = mlp(c.h_dim, c.prior_dim, c.mlp_layers)
        self.prior = GaussianHead(c.prior_dim, c.z_dim, c.min_std)
        self.phi_dec = mlp(c.z_feat_dim + c.h_dim, c.dec_dim, c.mlp_layers)
        self.dec = GaussianHead(c.dec_dim, c.frame, c.min_std)
        self.rnn = nn.GRUCell(c.x_feat_dim + c.z_feat_dim, c.h_dim)
        # The data set's global mean/std (set by the trainer, saved with the checkpoint because they are buffers).
        self.register_buffer("data_mean", torch.zeros(()))
        self.register_buffer("data_std", torch.ones(()))

    def set_data_stats(self, mean: float, std: float) -> None:
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"bad data statistics mean={mean}, std={std}")
        self.data_mean.fill_(float(mean))
        self.data_std.fill_(float(std))

    # --- training ----------------------------------------------------------------------------------------------
    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, T] audio in [-1, 1] -> [B, T // frame, frame] normalised frames (a trailing partial frame is dropped)."""
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"expected audio [B, 1, T], got {tuple(x.shape)}")
        n = x.shape[-1] // self.config.frame
        if n < 1:
            raise ValueError(f"need at least one frame of {self.config.frame} samples, got {x.shape[-1]}")
        frames = x[:, 0, : n * self.config.frame].reshape(x.shape[0], n, self.config.frame)
        return (frames - self.data_mean) / self.data_std

    def _encode_step(self, fx: torch.Tensor, h: torch.Tensor, eps: torch.Tensor | None):
        """One teacher-forced recurrence step: encoder, z by re-parameterisation, next h."""
        mq, sq = self.enc(self.phi_enc(torch.cat([fx, h], dim=-1)))
        z = mq if eps is None else mq + sq * eps
        fz = self.phi_z(z)
        h_next = self.rnn(torch.cat([fx, fz], dim=-1), h)
        return mq, sq, fz, h_next

    def forward_sequence(
        self, x: torch.Tensor, state: State | None = None, eps: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], State]:
        """The training forward pass over whole chunks. x [B, 1, T]; eps [B, n_frames, z_dim] (None = fresh normal
        noise; pass zeros for the encoder means). Returns per-frame [B, n_frames, ...] tensors and the final state.

        The encoder/GRU recurrence is sequential; phi_x, the prior and the decoder are batched over all frames.
        """
        frames = self._frames(x)
        B, n, _ = frames.shape
        if eps is None:
            eps = torch.randn(B, n, self.config.z_dim, device=x.device, dtype=x.dtype)
        h = torch.zeros(B, self.config.h_dim, device=x.device, dtype=x.dtype) if state is None else state["h"]
        fx_all = self.phi_x(frames)
        hs, mqs, sqs, fzs = [], [], [], []
        for t in range(n):
            hs.append(h)
            mq, sq, fz, h = self._encode_step(fx_all[:, t], h, eps[:, t])
            mqs.append(mq)
            sqs.append(sq)
            fzs.append(fz)
        h_prev = torch.stack(hs, dim=1)
        fz_all = torch.stack(fzs, dim=1)
        mp, sp = self.prior(self.phi_prior(h_prev))
        mx, sx = self.dec(self.phi_dec(torch.cat([fz_all, h_prev], dim=-1)))
        out = {
            "x": frames,
            "enc_mean": torch.stack(mqs, dim=1), "enc_std": torch.stack(sqs, dim=1),
            "prior_mean": mp, "prior_std": sp, "dec_mean": mx, "dec_std": sx,
        }
        return out, {"h": h}

    def step_teacher_forced(
        self, x_frame: torch.Tensor, state: State, eps: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], State]:
        """One frame of the training forward pass, computed the way `step` is (frame by frame).
        x_frame [B, 1, frame] real audio; eps [B, z_dim] (None = encoder mean). Outputs are [B, dim] tensors."""
        frame = self._frames(x_frame)[:, 0]
        h = state["h"]
        fx = self.phi_x(frame)
        mp, sp = self.prior(self.phi_prior(h))
        mq, sq, fz, h_next = self._encode_step(fx, h, eps)
        mx, sx = self.dec(self.phi_dec(torch.cat([fz, h], dim=-1)))
        out = {"x": frame, "enc_mean": mq, "enc_std": sq, "prior_mean": mp, "prior_std": sp, "dec_mean": mx,
               "dec_std": sx}
        return out, {"h": h_next}

    def losses(self, x: torch.Tensor, state: State | None = None) -> tuple[dict[str, torch.Tensor], State]:
        """Negative ELBO per sample (nats, in normalised units): `loss` = `kld` + `nll`."""
        out, state = self.forward_sequence(x, state)
        n_samples = out["x"].numel()
        kld = gaussian_kld(out["enc_mean"], out["enc_std"], out["prior_mean"], out["prior_std"]).sum() / n_samples
        nll = gaussian_nll(out["x"], out["dec_mean"], out["dec_std"]).sum() / n_samples
        # How well the decoder mean alone reconstructs the frames (normalised units): a readable progress figure.
        mse = (out["x"] - out["dec_mean"]).square().mean()
        return {"loss": kld + nll, "kld": kld, "nll": nll, "mse": mse.detach()}, state

    # --- streaming contract -----------------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return self.config.frame * self.config.frames_per_step

    def stream_meta(self) -> ModelMeta:
        c = self.config
        k = c.frames_per_step
        eps_z_shape = [c.z_dim] if k == 1 else [k, c.z_dim]
        controls = [
            ControlSpec("temperature", [], "temperature", 0.0, 2.0, 1.0,
                        doc="scales the prior's and the decoder's sigma; 0 plays the means"),
            ControlSpec("z_offset", [c.z_dim], "latent_offset", -3.0, 3.0, 0.0,
                        doc="added to every z drawn from the prior (units of the latent space)"),
            ControlSpec("grain", [], "grain", 0.0, 1.0, self.default_grain,
                        doc="fraction of the decoder's sigma heard: 0 plays the decoder mean, 1 the drawn frame"),
            ControlSpec("eps_z", eps_z_shape, "noise", -4.0, 4.0, 0.0, distribution="normal",
                        doc="standard normal noise for z, one row per frame"),
            ControlSpec("eps_x", [self.block_size], "noise", -4.0, 4.0, 0.0, distribution="normal",
                        doc="standard normal noise for the output samples"),
        ]
        return ModelMeta(
            kind="vrnn", sample_rate=c.sample_rate, channels=1, block_size=self.block_size, controls=controls,
            state=[StateSpec("h", [c.h_dim])], latent_size=c.z_dim, config=self.config_dict(), name=c.name,
            extra={"data_mean": float(self.data_mean), "data_std": float(self.data_std)},
        )

    @property
    def default_grain(self) -> float:
        return 0.0 if self.config.play_mean else 1.0

    def initial_state(self, batch: int) -> State:
        return {"h": torch.zeros(batch, self.config.h_dim, device=self.data_std.device)}

    def _generate_frame(self, h, temperature, z_offset, grain, eps_z, eps_x):
        mp, sp = self.prior(self.phi_prior(h))
        z = mp + temperature * sp * eps_z + z_offset
        fz = self.phi_z(z)
        mx, sx = self.dec(self.phi_dec(torch.cat([fz, h], dim=-1)))
        # The recurrence is driven by a frame drawn from the decoder, clipped to the audio range so that it only
        # ever sees audio-like input; what is played is the mean plus `grain` of the same draw (1: that frame).
        noise = temperature * sx * eps_x
        drawn = torch.clamp((mx + noise) * self.data_std + self.data_mean, -1.0, 1.0)
        fx = self.phi_x((drawn - self.data_mean) / self.data_std)
        h_next = self.rnn(torch.cat([fx, fz], dim=-1), h)
        audio = torch.clamp((mx + grain * noise) * self.data_std + self.data_mean, -1.0, 1.0)
        return audio, h_next

    def step(self, controls: Controls, state: State) -> tuple[torch.Tensor, State]:
        c = self.config
        k = c.frames_per_step
        temperature = controls["temperature"].reshape(-1, 1)
        z_offset = controls["z_offset"]
        # a caller of the torch model may leave grain out (the contract's default); the graph always has it
        grain = controls["grain"].reshape(-1, 1) if "grain" in controls else \
            torch.full_like(temperature, self.default_grain)
        eps_z = controls["eps_z"].reshape(-1, k, c.z_dim)
        eps_x = controls["eps_x"].reshape(-1, k, c.frame)
        h = state["h"]
        frames = []
        for i in range(k):  # unrolled at trace time: k is a config constant
            audio, h = self._generate_frame(h, temperature, z_offset, grain, eps_z[:, i], eps_x[:, i])
            frames.append(audio)
        audio = torch.cat(frames, dim=-1).unsqueeze(1)
        return audio, {"h": h}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
