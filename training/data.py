"""Reading a data set folder (written by `neuralinst prepare`, docs/DESIGN.md §2) and drawing training batches.

A data set folder holds `manifest.json` and `train.npy`, `valid.npy`, `test.npy`: int16 chunks [N, C, T].
Batches are a pure function of (seed, salt, step, rank): the trainer needs no data-loader state to resume exactly,
and each DDP rank reads different chunks of the same global batch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from instrument.errors import UserError

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
INT16_SCALE = 32768.0


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a data set folder (no {MANIFEST}); make one with `neuralinst prepare`.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}); prepare the data set again.") from None


def load_split(folder: str | Path, split: str) -> np.ndarray:
    """The int16 chunks [N, C, T] of one split, memory-mapped (nothing is read until used)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    path = Path(folder) / f"{split}.npy"
    if not path.is_file():
        raise UserError(f"{folder} has no {split} split ({path.name} is missing); prepare the data set again.")
    array = np.load(path, mmap_mode="r")
    if array.dtype != np.int16 or array.ndim != 3:
        raise UserError(f"{path}: expected int16 chunks [N, C, T], found {array.dtype} {list(array.shape)}.")
    return array


def manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint and an exported model keep about their training data (no per-chunk lists)."""
    keep = ("name", "kind", "sample_rate", "channels", "chunk_samples", "chunk_seconds", "hop_samples", "mean",
            "std", "seed", "silence_db", "min_silence", "splits", "total_seconds", "kept_seconds")
    summary = {k: manifest[k] for k in keep if k in manifest}
    summary["sources"] = [s.get("path") for s in manifest.get("sources", [])][:200]
    return summary


def to_float(chunks: np.ndarray) -> np.ndarray:
    return np.asarray(chunks, dtype=np.float32) / INT16_SCALE


class Batches:
    """Training batches of `length` samples cut from one split, reproducible from the step number alone.

    The chunk order is a fresh permutation per epoch (seeded by seed, salt and epoch); a chunk longer than
    `length` is cropped at a random offset (seeded by the same numbers and the step). `salt` changes the
    order after a rollback so a run does not walk into the same bad batch again.
    """

    def __init__(self, chunks: np.ndarray, length: int, batch_size: int, channels: int, seed: int = 0,
                 rank: int = 0, world: int = 1):
        n, c, t = chunks.shape
        if n == 0:
            raise UserError("the data set's training split is empty; prepare it from more audio.")
        if t < length:
            raise UserError(
                f"the data set's chunks are {t} samples long but the model needs {length}; prepare the data set "
                f"again with a longer --chunk-seconds (or set the config's chunk_seconds lower)."
            )
        if c != channels and channels != 1:
            raise UserError(f"the model wants {channels} channels but the data set has {c}; prepare it with --stereo.")
        self.chunks, self.length, self.batch_size = chunks, length, batch_size
        self.channels, self.seed, self.rank, self.world = channels, seed, rank, world
        self._perm_key: tuple[int, int] | None = None
        self._perm: np.ndarray | None = None

    def _permutation(self, salt: int, epoch: int) -> np.ndarray:
        if self._perm_key != (salt, epoch):
            rng = np.random.default_rng([self.seed, salt, epoch])
            self._perm, self._perm_key = rng.permutation(len(self.chunks)), (salt, epoch)
        return self._perm

    def indices(self, step: int, salt: int = 0) -> np.ndarray:
        n = len(self.chunks)
        global_batch = self.batch_size * self.world
        start = step * global_batch + self.rank * self.batch_size
        positions = np.arange(start, start + self.batch_size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for i, p in enumerate(positions):
            out[i] = self._permutation(salt, int(p // n))[p % n]
        return out

    def get(self, step: int, salt: int = 0) -> np.ndarray:
        """float32 [batch, channels, length] in [-1, 1)."""
        idx = self.indices(step, salt)
        t = self.chunks.shape[-1]
        rng = np.random.default_rng([self.seed, salt, step, self.rank, 1])
        offsets = rng.integers(0, t - self.length + 1, size=len(idx))
        batch = np.stack([self.chunks[i, :, o:o + self.length] for i, o in zip(idx, offsets)])
        batch = to_float(batch)
        if batch.shape[1] != self.channels:  # a stereo data set for a mono model: downmix
            batch = batch.mean(axis=1, keepdims=True)
        return batch


def fixed_batches(chunks: np.ndarray, length: int, batch_size: int, channels: int, limit: int) -> list[np.ndarray]:
    """The first `limit` batches of a split, cropped at the start: a fixed set for validation curves."""
    out = []
    for start in range(0, min(len(chunks), limit * batch_size), batch_size):
        batch = to_float(chunks[start:start + batch_size, :, :length])
        if batch.shape[1] != channels:
            batch = batch.mean(axis=1, keepdims=True)
        out.append(batch)
    return out
