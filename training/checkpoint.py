"""Checkpoints without pickle: safetensors for tensors, JSON for everything else (docs/DESIGN.md §2).

    RUN/checkpoints/step_00001000/model.safetensors   the model's state_dict
                                  optim.safetensors   every optimiser's tensors, keyed "<optimiser>/<param>/<key>"
                                  state.json          config, step, RNG states (as lists), data summary, losses,
                                                      the optimisers' non-tensor state (param groups: lr, betas...)
    RUN/checkpoints/latest                            the name of the newest complete checkpoint
    RUN/checkpoints/best                              the one with the lowest validation loss (kept when pruning)

A checkpoint is written to a temporary folder and renamed into place, so a run killed mid-write leaves the
previous one intact. `load_model(path)` is what export/ calls.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from instrument.errors import UserError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"  # the checkpoint with the lowest validation loss (likelihood models)
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optim.safetensors"
STATE_FILE = "state.json"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# --- RNG state ---------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state().tolist(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# --- optimiser state ---------------------------------------------------------------------------------------------
def split_optimizer_state(name: str, sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state_dict as (tensors for safetensors, JSON-able rest)."""
    tensors, plain = {}, {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{pid}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{pid}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": plain}


def join_optimizer_state(name: str, tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, item = key[len(prefix):].split("/", 1)
            state.setdefault(int(pid), {})[item] = value
    for key, value in rest.get("scalars", {}).items():
        pid, item = key.split("/", 1)
        state.setdefault(int(pid), {})[item] = value
    return {"state": state, "param_groups": rest["param_groups"]}


# --- writing and reading -----------------------------------------------------------------------------------------
def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module,
                    optimizers: dict[str, torch.optim.Optimizer], info: dict[str, Any], keep: int = 0,
                    best: bool = False) -> Path:
    """Write RUN/checkpoints/step_N atomically, point `latest` (and, if `best`, `best`) at it, and keep only the
    newest `keep` (0 = all) plus the one `best` names: a run that "unlearns" overnight keeps its best state."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(_unshare(weights), tmp / MODEL_FILE)
    optim_tensors, optim_rest = {}, {}
    for name, opt in optimizers.items():
        t, rest = split_optimizer_state(name, opt.state_dict())
        optim_tensors.update(t)
        optim_rest[name] = rest
    save_file(optim_tensors, tmp / OPTIM_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({**info, "step": step, "optimizers": optim_rest}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for pointer in (LATEST, BEST) if best else (LATEST,):
        tmp_pointer = root / (pointer + ".tmp")
        tmp_pointer.write_text(final.name + "\n")
        os.replace(tmp_pointer, root / pointer)
    if keep > 0:
        protected = (root / BEST).read_text().strip() if (root / BEST).is_file() else None
        for old in sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
            if old.name != protected:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): give each its own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a run folder (its latest checkpoint), a checkpoints folder, a pointer file
    (RUN/checkpoints/best or latest), or itself."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    if path.is_file() and path.name in (LATEST, BEST):
        target = path.parent / path.read_text().strip()
        if (target / STATE_FILE).is_file():
            return target
        raise UserError(f"{path} names {target.name}, which is missing or incomplete.")
    for root in (path / CHECKPOINTS, path):
        latest = root / LATEST
        if latest.is_file():
            target = root / latest.read_text().strip()
            if (target / STATE_FILE).is_file():
                return target
            raise UserError(f"{latest} names {target.name}, which is missing or incomplete.")
    if not path.exists():
        raise UserError(f"{path}: no such run or checkpoint folder.")
    raise UserError(f"{path} holds no checkpoint (no {STATE_FILE} and no {CHECKPOINTS}/{LATEST}).")


def read_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    folder = resolve(path)
    try:
        return folder, json.loads((folder / STATE_FILE).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{folder / STATE_FILE}: not valid JSON ({e.msg}).") from None


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    try:
        tensors = load_file(folder / MODEL_FILE)
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise UserError(f"{folder / MODEL_FILE}: cannot be read ({e}).") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UserError(f"{folder / MODEL_FILE} does not fit the model of its config "
                        f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}).")


def load_optimizers(optimizers: dict[str, torch.optim.Optimizer], folder: Path, info: dict[str, Any]) -> None:
    tensors = load_file(folder / OPTIM_FILE)
    for name, opt in optimizers.items():
        if name not in info.get("optimizers", {}):
            raise UserError(f"{folder} has no state for the {name!r} optimiser.")
        opt.load_state_dict(join_optimizer_state(name, tensors, info["optimizers"][name]))


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model (eval mode) and its checkpoint info (config, step, data summary, losses...)."""
    from training.configs import build_model, config_from_dict

    folder, info = read_checkpoint(path)
    if "config" not in info:
        raise UserError(f"{folder / STATE_FILE} has no config.")
    model = build_model(config_from_dict(info["config"]))
    load_weights(model, folder)
    info = {**info, "path": str(folder)}
    return model.to(device).eval(), info
