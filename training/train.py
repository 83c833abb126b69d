"""`neuralinst train CONFIG --data DATASET --out RUN`: the training loop (one process, or DDP under torchrun).

    neuralinst train samplernn-paper --data data/piano --out runs/piano            # one GPU or the CPU
    torchrun --nproc-per-node 8 -m neuralinst train ...                           # several GPUs: PyTorch DDP
    neuralinst train ... --resume                                                  # continue exactly

The loop (`Trainer.fit`) is short; its pieces are factored below it:
- `Objective`: one training step of a model family (likelihood with TBPTT, or WGAN-GP with two optimisers);
- `Guard`: spots a non-finite or exploding loss; the trainer then rolls back to the last good in-memory snapshot
  (taken at every checkpoint and every `--snapshot-every` steps), halves the learning rate and goes on;
- `training.checkpoint`: checkpoints without pickle; `training.data.Batches`: batches as a pure function of the step.
Batches and all randomness are reproducible from the checkpoint, so `--resume` gives the same losses as a run that
never stopped. Validation and audio samples run under `torch.random.fork_rng`, so they never disturb training.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from instrument.errors import UserError
from training import checkpoint as ckpt
from training.configs import apply_overrides, build_model, config_from_dict, get_config
from training.data import Batches, fixed_batches, load_split, manifest_summary, read_manifest

LN2 = math.log(2.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a config name (e.g. samplernn-paper, vrnn-tiny) or a config .json file")
    p.add_argument("--data", help="the data set folder written by `neuralinst prepare`")
    p.add_argument("--out", help="the run folder (checkpoints, samples, loss.png)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    p.add_argument("--dry-run", action="store_true", help="print the model's parameter counts and exit")
    p.add_argument("--steps", type=int, default=100_000, help="train until this many steps in total")
    p.add_argument("--checkpoint-every", type=int, default=None, help="default: the config's checkpoint_every")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA for SampleRNN and WaveGAN, fp32 for VRNN and on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log-every", type=int, default=10, help="steps averaged into one loss-history entry")
    p.add_argument("--valid-batches", type=int, default=8, help="validation batches at each checkpoint")
    p.add_argument("--snapshot-every", type=int, default=100, help="steps between in-memory rollback snapshots")
    p.add_argument("--spike-factor", type=float, default=25.0,
                   help="a loss this many median deviations above the recent median is an explosion (0: off)")
    p.add_argument("--max-rollbacks", type=int, default=12, help="give up after this many rollbacks in a row")
    p.add_argument("--keep-checkpoints", type=int, default=5, help="checkpoints kept on disk (0: all)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start a new run from this checkpoint's weights (fresh optimisers, step 0), e.g. one that "
                        "`python -m export.recover` rebuilt from a shipped model")
    p.add_argument("--critic-only-steps", type=int, default=0,
                   help="WaveGAN: the generator waits until this step while the critic trains (a fresh critic "
                        "beside a trained generator, after --init-from)")


# --- distributed set-up ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (so all ranks take the same branch)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([float(flag)], device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            # Wait for every rank (rank 0 may still be writing the exit checkpoint): a rank that tears down its
            # gloo pairs early made the other abort at exit ("terminate called without an active exception").
            dist.barrier()
            dist.destroy_process_group()


def _comm_device() -> str:
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" else "cpu"


class Methods(nn.Module):
    """Routes DDP's forward to a model method (`losses`, `critic_losses`...): DDP syncs gradients only through
    `forward`, and the training interface is those methods."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, method: str, *args):
        return getattr(self.model, method)(*args)


# --- one training step per model family -----------------------------------------------------------------------------
Metrics = dict[str, float]


class Objective:
    """A model family's step. `step(get_batch)` returns (metrics, ok); ok=False means a non-finite loss or gradient
    was found before the optimiser stepped (on any rank)."""

    optimizers: dict[str, torch.optim.Optimizer]
    monitor: str | None = "loss"  # the metric the spike detector watches (None: non-finite checks only)

    def __init__(self, model: nn.Module, run: nn.Module, config: Any, dist: Dist, autocast: Callable):
        self.model, self.run, self.config, self.dist, self.autocast = model, run, config, dist, autocast

    def _apply(self, loss: torch.Tensor, params: list[nn.Parameter], opt: torch.optim.Optimizer) -> bool:
        """Backward, check, clip, step. Nothing is stepped unless the loss and gradient are finite on all ranks."""
        bad = not bool(torch.isfinite(loss.detach()))
        if not self.dist.any(bad):  # a NaN loss is not back-propagated: its gradient would be NaN anyway
            loss.backward()
            clip = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            bad = not bool(torch.isfinite(norm))
        if self.dist.any(bad):
            opt.zero_grad(set_to_none=True)
            return False
        opt.step()
        return True


def _mean(rows: list[dict[str, torch.Tensor]]) -> Metrics:
    return {k: float(sum(float(r[k]) for r in rows) / len(rows)) for k in rows[0]}


class Likelihood(Objective):
    """SampleRNN and VRNN: minimise `losses(x, state)["loss"]`; TBPTT when `model.tbptt_samples` > 0."""

    def __init__(self, *a):
        super().__init__(*a)
        c = self.config
        self.params = list(self.model.parameters())
        self.optimizers = {"model": torch.optim.Adam(self.params, lr=c.lr, betas=tuple(c.betas))}
        self.tbptt = int(getattr(self.model, "tbptt_samples", 0) or 0)

    def pieces(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(x, self.tbptt, dim=-1)) if self.tbptt > 0 else [x]

    def step(self, get_batch: Callable[[int], torch.Tensor]) -> tuple[Metrics, bool]:
        opt, state, rows = self.optimizers["model"], None, []
        for piece in self.pieces(get_batch(0)):
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                metrics, state = self.run("losses", piece, state)
            state = {k: v.detach() for k, v in state.items()} if state else None
            if not self._apply(metrics["loss"].float(), self.params, opt):
                return {}, False
            rows.append({k: v.detach().float() for k, v in metrics.items()})
        return _mean(rows), True

    @torch.no_grad()
    def validate(self, batches: list[torch.Tensor]) -> Metrics:
        rows, device = [], next(self.model.parameters()).device
        for x in batches:
            x, state = x.to(device), None
            for piece in self.pieces(x):
                with self.autocast():
                    metrics, state = self.model.losses(piece, state)
                rows.append({k: v.float() for k, v in metrics.items()})
        out = _mean(rows)
        if self.model.kind == "samplernn" and "bits_per_sample" not in out:
            out["bits_per_sample"] = out["loss"] / LN2
        return out


class Adversarial(Objective):
    """WaveGAN (WGAN-GP): `n_critic` critic steps on fresh real batches, then one generator step; two Adams."""

    monitor = None  # a critic's loss swings by design: only non-finite values count as failures

    def __init__(self, *a):
        super().__init__(*a)
        c = self.config
        self.g_params = list(self.model.generator.parameters())
        self.c_params = list(self.model.critic.parameters())
        self.optimizers = {
            "generator": torch.optim.Adam(self.g_params, lr=c.lr, betas=tuple(c.betas)),
            "critic": torch.optim.Adam(self.c_params, lr=getattr(c, "critic_lr", c.lr), betas=tuple(c.betas)),
        }
        self.n_critic = int(getattr(c, "n_critic", 1))
        self.generator_waits = False  # set by the trainer for --critic-only-steps

    def step(self, get_batch: Callable[[int], torch.Tensor]) -> tuple[Metrics, bool]:
        g_opt, c_opt = self.optimizers["generator"], self.optimizers["critic"]
        rows = []
        for i in range(self.n_critic):
            real = get_batch(i)
            g_opt.zero_grad(set_to_none=True)
            c_opt.zero_grad(set_to_none=True)
            with self.autocast():
                m = self.run("critic_losses", real)
            if not self._apply(m["loss"].float(), self.c_params, c_opt):
                return {}, False
            rows.append({f"critic_{k}": v.detach().float() for k, v in m.items()})
        g_opt.zero_grad(set_to_none=True)
        c_opt.zero_grad(set_to_none=True)
        if self.generator_waits:  # measured for the log, not applied
            with torch.no_grad(), self.autocast():
                m = self.run("generator_losses", real.shape[0])
        else:
            with self.autocast():
                m = self.run("generator_losses", real.shape[0])
            if not self._apply(m["loss"].float(), self.g_params, g_opt):
                return {}, False
        c_opt.zero_grad(set_to_none=True)  # the generator's backward also reached the critic
        out = _mean(rows)
        out.update({f"generator_{k}": float(v.detach()) for k, v in m.items()})
        out["loss"] = out["critic_loss"]
        return out, True

    def validate(self, batches: list[torch.Tensor]) -> Metrics:
        """The critic's loss on held-out real clips (its Wasserstein estimate; the penalty needs autograd)."""
        rows, device = [], next(self.model.parameters()).device
        for x in batches:
            with self.autocast():
                m = self.model.critic_losses(x.to(device))
            rows.append({k: v.detach().float() for k, v in m.items()})
        for p in self.model.parameters():
            p.grad = None
        return _mean(rows)


# --- stability: explosion detection and rollback ----------------------------------------------------------------------
class Guard:
    """A loss is an explosion when it is non-finite, or (with `monitor`) more than `factor` median absolute
    deviations above the median of the last 100 good losses. Snapshots are deep copies kept in memory."""

    def __init__(self, factor: float, window: int = 100):
        self.factor, self.recent = factor, deque(maxlen=window)
        self.snapshot: dict[str, Any] | None = None

    def exploded(self, value: float | None) -> bool:
        if value is None:
            return False
        if not math.isfinite(value):
            return True
        if self.factor > 0 and len(self.recent) >= 20:
            arr = np.asarray(self.recent)
            median = float(np.median(arr))
            mad = float(np.median(np.abs(arr - median))) + 1e-3 * abs(median) + 1e-8
            if value > median + self.factor * mad:
                return True
        self.recent.append(value)
        return False

    def take(self, step: int, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.snapshot = {
            "step": step,
            "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            "optim": {n: copy.deepcopy(_to_cpu(o.state_dict())) for n, o in optimizers.items()},
            "rng": ckpt.rng_state(),
        }

    def restore(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> int:
        s = self.snapshot
        model.load_state_dict(s["model"])
        for n, o in optimizers.items():
            o.load_state_dict(copy.deepcopy(s["optim"][n]))
        ckpt.set_rng_state(s["rng"])
        return s["step"]  # `recent` is kept: those losses are still the yardstick


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


# --- the trainer --------------------------------------------------------------------------------------------------------
class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step and checkpoint; a second Ctrl-C quits at once."""

    def __init__(self):
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if hasattr(signal, "pthread_sigmask") and threading_is_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nneuralinst train: {signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
              f"(Ctrl-C again quits without saving).", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def pick_device(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available.")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def parameter_table(model: nn.Module) -> str:
    """Parameter counts per submodule (two levels) and in total."""
    lines = []
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        lines.append(f"  {name:<32} {n:>14,}")
        for sub_name, sub in child.named_children():
            m = sum(p.numel() for p in sub.parameters())
            if m:
                lines.append(f"    {name + '.' + sub_name:<30} {m:>14,}")
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        lines.append(f"  {'(own parameters)':<32} {own:>14,}")
    total = sum(p.numel() for p in model.parameters())
    lines.append(f"  {'total':<32} {total:>14,}")
    return "\n".join(lines)


class Trainer:
    def __init__(self, args: argparse.Namespace, dist: Dist | None = None):
        self.args = args
        self.device = pick_device(args.device)
        self.dist = dist or Dist()
        if self.device == "cuda":
            torch.cuda.set_device(self.dist.local_rank)
        self.out = Path(args.out)
        self.manifest = read_manifest(args.data)
        resume_from = self._find_resume()
        if resume_from is not None:
            self.ckpt_dir, self.info = resume_from
            config = apply_overrides(config_from_dict(self.info["config"]), args.set)
            if args.config != config.name and self.dist.main:
                print(f"neuralinst train: resuming with the run's own config {config.name!r} "
                      f"(not {args.config!r}).", file=sys.stderr)
        else:
            self.ckpt_dir, self.info = None, {}
            config = get_config(args.config, args.set)
        self.config = config
        self.check_data_fits()
        torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = build_model(config).to(self.device)
        self.init_from = self.info.get("init_from")
        if args.init_from:
            self.init_from = self._init_weights(args.init_from)
        if hasattr(self.model, "set_data_stats"):
            self.model.set_data_stats(float(self.manifest["mean"]), float(self.manifest["std"]))
        self.run_module: nn.Module = Methods(self.model)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.dist.local_rank] if self.device == "cuda" else None
            # WaveGAN's two halves take turns; SampleRNN's learned h0 is unused after the first TBPTT piece
            unused = hasattr(self.model, "critic_losses") or bool(getattr(self.model, "tbptt_samples", 0))
            self.run_module = DDP(self.run_module, device_ids=ids, find_unused_parameters=unused)
        family = Adversarial if hasattr(self.model, "critic_losses") else Likelihood
        self.objective = family(self.model, self.run_module, config, self.dist, self.autocast_factory())
        if args.critic_only_steps and family is not Adversarial:
            raise UserError(f"--critic-only-steps is for WaveGAN; {config.name} has no critic.")
        self.length = self.training_length()
        self.batches = Batches(load_split(args.data, "train"), self.length, config.batch_size, config.channels,
                               seed=args.seed, rank=self.dist.rank, world=self.dist.world)
        self.valid = [torch.from_numpy(b) for b in fixed_batches(  # kept on the CPU: moved one batch at a time
            load_split(args.data, "valid"), self.length, config.batch_size, config.channels, args.valid_batches)]
        self.every = args.checkpoint_every or config.checkpoint_every
        self.guard = Guard(args.spike_factor)
        self.step, self.salt, self.rollbacks_in_a_row = 0, 0, 0
        self.history: dict[str, list] = {"train": [], "valid": [], "events": []}
        torch.manual_seed(args.seed * 1_000_003 + self.dist.rank)  # each rank draws its own noise from here on
        if self.ckpt_dir is not None:
            self._restore()

    # --- set-up helpers -----------------------------------------------------------------------------------------------
    def _find_resume(self):
        has = (self.out / ckpt.CHECKPOINTS / ckpt.LATEST).is_file()
        if has and not self.args.resume:
            raise UserError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out.")
        if self.args.resume and not has:
            if self.dist.main:
                print(f"neuralinst train: {self.out} has no checkpoint yet; starting a new run.", file=sys.stderr)
            return None
        return ckpt.read_checkpoint(self.out) if has else None

    def _init_weights(self, source: str) -> dict:
        """Every weight from `source` (a checkpoint of the same model), before the first step of a new run."""
        if self.ckpt_dir is not None:
            raise UserError(f"--init-from starts a new run, but {self.out} already holds one; choose another --out.")
        folder, info = ckpt.read_checkpoint(source)
        if info.get("kind") not in (None, self.config.kind):
            raise UserError(f"{folder} holds a {info.get('kind')} model, not a {self.config.kind}.")
        ckpt.load_weights(self.model, folder)
        origin = {"path": str(Path(source).resolve()), "checkpoint": folder.name, "step": int(info.get("step", 0))}
        if info.get("recovered_from"):
            origin["recovered_from"] = info["recovered_from"]
        if self.dist.main:
            print(f"neuralinst train: a new run from the weights of {folder} (its step {origin['step']}).",
                  file=sys.stderr)
        return origin

    def check_data_fits(self) -> None:
        c, m = self.config, self.manifest
        if int(m["sample_rate"]) != c.sample_rate:
            raise UserError(f"the data set is at {m['sample_rate']} Hz but {c.name} wants {c.sample_rate} Hz; prepare "
                            f"it with --sample-rate {c.sample_rate} (or --set sample_rate={m['sample_rate']}).")

    def training_length(self) -> int:
        """Samples per training example: a WaveGAN clip, or the config's chunk (a whole number of model blocks)."""
        c = self.config
        if hasattr(self.model, "critic_losses"):
            return int(self.model.stream_meta().block_size)
        n = round(c.chunk_seconds * c.sample_rate)
        block = int(getattr(self.model, "block_size", 1) or 1)
        return max(block, n - n % block)

    def autocast_factory(self) -> Callable[[], contextlib.AbstractContextManager]:
        choice = self.args.precision
        bf16 = self.device == "cuda" and (choice == "bf16" or (choice == "auto" and self.config.kind != "vrnn"))
        if bf16:
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext

    def _restore(self) -> None:
        info = self.info
        ckpt.load_weights(self.model, self.ckpt_dir)
        ckpt.load_optimizers(self.objective.optimizers, self.ckpt_dir, info)
        self.step, self.salt = int(info["step"]), int(info.get("salt", 0))
        self.history = info.get("history", self.history)
        self.apply_learning_rate_override()
        rng = info.get("rng", [])
        if self.dist.rank < len(rng):
            ckpt.set_rng_state(rng[self.dist.rank])
        if self.dist.main:
            print(f"neuralinst train: resuming {self.out} at step {self.step}.", file=sys.stderr)

    def apply_learning_rate_override(self) -> None:
        """`--resume --set lr=X` sets that rate from here on: the optimiser state restored from the checkpoint
        carries the old rate (and any rollback cuts), so without this the override would be ignored. Each optimiser
        gets the rate it was created with from the config. The change is an event in the run's history, so the
        model card and loss plot show where it happened."""
        if not {o.split("=", 1)[0].strip() for o in self.args.set} & {"lr", "critic_lr"}:
            return
        c, changed = self.config, []
        for name, opt in self.objective.optimizers.items():
            rate = getattr(c, "critic_lr", c.lr) if name == "critic" else c.lr
            if opt.param_groups[0]["lr"] != rate:
                changed.append((opt.param_groups[0]["lr"], rate))
            for group in opt.param_groups:
                group["lr"] = rate
        if not changed:
            return
        old, rate = changed[0]
        self.history["events"].append({"step": self.step, "event": "lr", "from": old, "lr": rate})
        if self.dist.main:
            print(f"neuralinst train: learning rate {old:.3g} -> {rate:.3g} from step {self.step}.", file=sys.stderr)

    def get_batch(self, i: int) -> torch.Tensor:
        n = getattr(self.objective, "n_critic", 1)
        index = self.step * n + i if isinstance(self.objective, Adversarial) else self.step
        return torch.from_numpy(self.batches.get(index, self.salt)).to(self.device, non_blocking=True)

    # --- the loop -------------------------------------------------------------------------------------------------------
    def fit(self) -> int:
        from tqdm import tqdm

        args, target = self.args, self.args.steps
        self.model.train()
        self.take_snapshot()
        window: list[Metrics] = []
        # on a terminal the bar redraws; in a log file (an overnight `nohup`) it writes a line a minute
        tty = sys.stderr.isatty()
        bar = tqdm(total=target, initial=self.step, desc=self.config.name, unit="step", dynamic_ncols=True,
                   disable=not self.dist.main, file=sys.stderr, mininterval=0.5 if tty else 60.0)
        with StopRequest() as stop, bar:
            while self.step < target:
                if isinstance(self.objective, Adversarial):
                    self.objective.generator_waits = self.step < args.critic_only_steps
                metrics, ok = self.objective.step(self.get_batch)
                monitor = self.objective.monitor
                bad = not ok or self.guard.exploded(metrics.get(monitor) if monitor else None)
                if self.dist.any(bad):
                    self.rollback(metrics.get("loss"), bar)
                    window = []
                    continue
                self.step += 1
                bar.update(1)
                window.append(metrics)
                if len(window) >= args.log_every:
                    self.history["train"].append({"step": self.step, **_average(window)})
                    window = []
                bar.set_postfix(self.postfix(metrics), refresh=False)
                if self.step % self.every == 0 or self.step == target:
                    self.checkpoint(bar)
                elif self.step % args.snapshot_every == 0:
                    self.take_snapshot()
                if self.dist.any(stop.requested):
                    break
            if window:
                self.history["train"].append({"step": self.step, **_average(window)})
            if not self.history["valid"] or self.history["valid"][-1]["step"] != self.step:
                self.checkpoint(bar)  # at exit: the end, Ctrl-C or SIGTERM
        if self.dist.main:
            print(f"neuralinst train: {self.out} at step {self.step}; load it with "
                  f"`neuralinst export {self.out} --out MODEL.onnx`.", file=sys.stderr)
        return 0

    def postfix(self, metrics: Metrics) -> dict[str, str]:
        out = {"loss": f"{metrics['loss']:.4g}"}
        if "generator_loss" in metrics:
            out["g"] = f"{metrics['generator_loss']:.4g}"
        if self.history["valid"]:
            v = self.history["valid"][-1]
            out["val"] = f"{v.get('bits_per_sample', v['loss']):.4g}" + (" bps" if "bits_per_sample" in v else "")
        out["lr"] = f"{self.objective.optimizers[next(iter(self.objective.optimizers))].param_groups[0]['lr']:.2g}"
        return out

    def rollback(self, loss: float | None, bar) -> None:
        self.rollbacks_in_a_row += 1
        if self.rollbacks_in_a_row > self.args.max_rollbacks:
            since = self.guard.snapshot["step"]
            raise UserError(f"the loss exploded {self.rollbacks_in_a_row - 1} times after step {since} even with the "
                            f"learning rate lowered each time; the last good checkpoint is in {self.out}; check the "
                            f"data or the config.")
        back_to = self.guard.restore(self.model, self.objective.optimizers)
        lrs = []
        for opt in self.objective.optimizers.values():
            for group in opt.param_groups:
                group["lr"] *= 0.5
                lrs.append(group["lr"])
        self.history["train"] = [r for r in self.history["train"] if r["step"] <= back_to]  # those steps are undone
        self.salt += 1  # a different batch order from here, so the same bad batch is not met again at once
        event = {"step": self.step, "event": "rollback", "to_step": back_to, "loss": loss, "lr": lrs[0]}
        self.history["events"].append(event)
        if self.dist.main:
            bar.write(f"neuralinst train: step {self.step + 1}: loss {loss} exploded; rolled back to step {back_to}, "
                      f"learning rate halved to {lrs[0]:.3g}.", file=sys.stderr)
        bar.n = self.step = back_to
        bar.refresh()

    def checkpoint(self, bar) -> None:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.device == "cuda" else []):
            self.model.eval()
            valid = self.objective.validate(self.valid) if self.valid else {}
            self.model.train()
        if valid:
            self.history["valid"].append({"step": self.step, **valid})
        rngs = self.dist.gather(ckpt.rng_state())
        if self.dist.main:
            info = {
                "config": dataclasses.asdict(self.config),
                "kind": self.config.kind,
                "rng": rngs,
                "salt": self.salt,
                "seed": self.args.seed,
                "world_size": self.dist.world,
                "data": manifest_summary(self.manifest),
                "data_path": str(Path(self.args.data).resolve()),
                "history": self.history,
                "time": time.time(),
            }
            if self.init_from:
                info["init_from"] = self.init_from
            if self.args.critic_only_steps:
                info["critic_only_steps"] = self.args.critic_only_steps
            ckpt.save_checkpoint(self.out, self.step, self.model, self.objective.optimizers, info,
                                 keep=self.args.keep_checkpoints, best=self.is_best(valid))
            self.render_sample(bar)
            plot_losses(self.history, self.out / "loss.png", self.config.name)
            if valid:
                shown = valid.get("bits_per_sample", valid["loss"])
                bar.write(f"step {self.step}: valid {'bits/sample' if 'bits_per_sample' in valid else 'loss'} "
                          f"{shown:.4g}; checkpoint saved.", file=sys.stderr)
        self.take_snapshot()
        self.dist.barrier()

    def is_best(self, valid: Metrics) -> bool:
        """The lowest validation loss so far (likelihood models only: a critic's loss does not rank generators)."""
        if not valid or isinstance(self.objective, Adversarial) or not math.isfinite(valid["loss"]):
            return False
        earlier = [r["loss"] for r in self.history["valid"][:-1] if math.isfinite(r["loss"])]
        return not earlier or valid["loss"] < min(earlier)

    def take_snapshot(self) -> None:
        """A new rollback point: the run has got past the old one, so the count of failed retries starts over."""
        self.guard.take(self.step, self.model, self.objective.optimizers)
        self.rollbacks_in_a_row = 0

    def render_sample(self, bar) -> None:
        seconds = float(getattr(self.config, "sample_seconds", 0) or 0)
        if seconds <= 0:
            return
        import soundfile as sf

        try:
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.device == "cuda" else []):
                self.model.eval()
                audio = generate(self.model, seconds, self.device, seed=self.step)
                self.model.train()
            path = self.out / "samples" / f"step_{self.step}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = np.clip(audio[0].float().cpu().numpy().T, -1.0, 1.0)
            sf.write(path, data, self.config.sample_rate, subtype="PCM_16")
        except Exception as e:  # a failed render must not end an overnight run; it is reported and skipped
            self.model.train()
            bar.write(f"neuralinst train: could not render a sample at step {self.step}: {e}", file=sys.stderr)


def _average(rows: list[Metrics]) -> Metrics:
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in rows[-1]}


@torch.no_grad()
def generate(model, seconds: float, device: str, seed: int = 0) -> torch.Tensor:
    """`StreamingModel.generate` on the model's device (state and controls are moved there; the meta is read once)."""
    from training.streaming import StreamingModel

    if type(model).generate is not StreamingModel.generate:  # the model knows better (WaveGAN: fresh z per clip)
        return model.generate(seconds, seed=seed)
    meta = model.stream_meta()
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * meta.sample_rate)
    state = {k: v.to(device) for k, v in model.initial_state(1).items()}
    blocks, total = [], 0
    while total < n:
        controls = {}
        for c in meta.controls:
            shape = (1, *c.shape)
            if c.role == "noise":
                v = torch.randn(shape, generator=g) if c.distribution == "normal" else torch.rand(shape, generator=g)
            else:
                v = torch.full(shape, float(c.default))
            controls[c.name] = v.to(device)
        audio, state = model.step(controls, state)
        blocks.append(audio)
        total += audio.shape[-1]
    return torch.cat(blocks, dim=-1)[..., :n]


def plot_losses(history: dict[str, list], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, valid = history["train"], history["valid"]
    if not train and not valid:
        return
    keys = [k for k in ("loss", "generator_loss") if train and k in train[-1]]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for k in keys:
        ax.plot([r["step"] for r in train], [r[k] for r in train], label=f"train {k}", linewidth=1)
    if valid:
        ax.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="valid loss", markersize=3)
    events = history.get("events", [])
    for e in events:  # red: a rollback (rate halved); blue: a rate set on resume
        ax.axvline(e["step"], color="blue" if e.get("event") == "lr" else "red", alpha=0.3, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    kinds = {"lr" if e.get("event") == "lr" else "rollback" for e in events}
    legend = ", ".join(t for k, t in (("rollback", "red lines: rollbacks"), ("lr", "blue: learning rate set"))
                       if k in kinds)
    ax.set_title(f"{title} ({legend})" if legend else title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def dry_run(args: argparse.Namespace) -> int:
    config = get_config(args.config, args.set)
    model = build_model(config)
    print(f"{config.name} ({config.kind}): parameters per submodule")
    print(parameter_table(model))
    print(json.dumps(dataclasses.asdict(config), sort_keys=True))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.dry_run:
        return dry_run(args)
    if not args.data or not args.out:
        raise UserError("both --data DATASET and --out RUN are needed (or --dry-run).")
    if args.steps < 1:
        raise UserError("--steps must be at least 1.")
    for flag in ("checkpoint_every", "log_every", "snapshot_every", "valid_batches"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "valid_batches" else 1):
            raise UserError(f"--{flag.replace('_', '-')} must be at least {0 if flag == 'valid_batches' else 1}.")
    dist = Dist.from_env(pick_device(args.device))
    try:
        trainer = Trainer(args, dist)
        try:
            return trainer.fit()
        except torch.cuda.OutOfMemoryError:
            raise UserError(f"out of GPU memory with batch_size={trainer.config.batch_size}; lower it with --set "
                            f"batch_size=N (the last checkpoint in {trainer.out} is intact).") from None
    finally:
        dist.close()
