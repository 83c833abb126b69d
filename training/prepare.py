"""`neuralinst prepare`: audio files -> a data set folder (docs/DESIGN.md §2).

Pipeline, per source file: decode (soundfile: wav, flac, ogg/opus, mp3, aiff), downmix (or keep two channels),
resample (soxr, HQ), remove silences (frames quieter than --silence-db for at least --min-silence seconds, as
Dadabots did) and join what remains. Each file's cleaned audio is cut into *segments*; segments are shuffled and
assigned to train/valid/test (88/6/6 of the chunks) BEFORE chunking, so overlapping chunks of one region never
straddle two splits. Then each segment is cut into overlapping chunks, which are shuffled within their split and
written as int16 [N, C, T] .npy files next to manifest.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from instrument.errors import UserError
from training.data import MANIFEST, SPLITS

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".w64", ".rf64", ".caf"}
SPLIT_FRACTIONS = {"valid": 0.06, "test": 0.06}  # the rest (88 %) is train, as Dadabots
# Default chunk length per model kind: SampleRNN 8 s, VRNN 0.5 s (the thesis); WaveGAN is sized in samples
# (its generator emits exactly 16384 or 65536 samples, about 1 s or 4 s at 16 kHz).
KIND_CHUNKS = {"samplernn": ("seconds", 8.0), "vrnn": ("seconds", 0.5), "wavegan": ("samples", 16384),
               "wavegan-4s": ("samples", 65536)}
SILENCE_FRAME_SECONDS = 0.02
SEGMENTS_WANTED = 50  # enough split units that 6 % is a few of them, on short data sets too
MAX_SEGMENT_CHUNKS = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="audio files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="the data set folder to write")
    p.add_argument("--kind", required=True, choices=sorted(KIND_CHUNKS), help="which model the chunks are sized for")
    p.add_argument("--chunk-seconds", type=float, default=None, help="chunk length (default: per kind)")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--stereo", action="store_true", help="keep two channels (multi-channel WaveGAN)")
    p.add_argument("--silence-db", type=float, default=-50.0, help="frames below this RMS level (dBFS) are silent")
    p.add_argument("--min-silence", type=float, default=0.5, help="remove silences at least this long (seconds)")
    p.add_argument("--hop-fraction", type=float, default=0.5, help="hop between chunks, as a fraction of a chunk")
    p.add_argument("--segment-seconds", type=float, default=None,
                   help="length of the regions assigned whole to one split (default: from the data's length)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite a folder that is not a data set")


@dataclass
class Source:
    path: Path
    seconds: float  # decoded length before silence removal
    audio: np.ndarray  # int16 [C, n] after resampling and silence removal


@dataclass
class Segment:
    source: int
    start: int  # sample offsets into the source's cleaned audio
    end: int
    split: str = "train"


def find_audio(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise UserError(f"{item}: no audio files found ({', '.join(sorted(AUDIO_SUFFIXES))}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{item}: no such file or folder.")
    return list(dict.fromkeys(files))  # drop duplicates, keep order


def decode(path: Path, sample_rate: int, channels: int) -> tuple[np.ndarray, float]:
    """float32 [C, n] at `sample_rate`, and the file's duration in seconds. Raises on an unreadable file."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [n, c]
    seconds = len(data) / sr
    if channels == 1:
        data = data.mean(axis=1, keepdims=True)
    elif data.shape[1] == 1:
        data = np.repeat(data, channels, axis=1)
    else:
        data = data[:, :channels]
    if sr != sample_rate and len(data):
        data = soxr.resample(data, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(data.T, dtype=np.float32), seconds


def remove_silence(audio: np.ndarray, sample_rate: int, silence_db: float, min_silence: float) -> np.ndarray:
    """Drop every run of frames quieter than `silence_db` lasting at least `min_silence` s; join the rest."""
    frame = max(1, round(SILENCE_FRAME_SECONDS * sample_rate))
    n_frames = audio.shape[1] // frame
    if n_frames == 0:
        return audio[:, :0]
    framed = audio[:, : n_frames * frame].reshape(audio.shape[0], n_frames, frame)
    power = (framed.astype(np.float64) ** 2).mean(axis=(0, 2))
    level = 10 * np.log10(power + 1e-20)
    silent = level < silence_db
    keep = np.ones(audio.shape[1], dtype=bool)
    min_frames = max(1, round(min_silence * sample_rate / frame))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        if stop - start >= min_frames:
            keep[start * frame: stop * frame] = False
    if n_frames and silent[-1]:
        # the partial frame after the last full one belongs to a trailing silence
        run_start = edges[-2]
        if n_frames - run_start >= min_frames:
            keep[n_frames * frame:] = False
    return audio[:, keep]


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


def make_segments(sources: list[Source], chunk: int, segment: int) -> list[Segment]:
    out = []
    for i, s in enumerate(sources):
        n = s.audio.shape[1]
        count = max(1, n // segment)  # equal parts, each at least `segment` long: no short remainder is lost
        bounds = np.linspace(0, n, count + 1).round().astype(int)
        out.extend(Segment(i, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= chunk)
    return out


def chunk_offsets(segment: Segment, chunk: int, hop: int) -> list[int]:
    return list(range(segment.start, segment.end - chunk + 1, hop))


def assign_splits(segments: list[Segment], chunk: int, hop: int, rng: np.random.Generator) -> None:
    """Shuffle the segments and give the first ones to valid and test until each has its share of chunks."""
    order = rng.permutation(len(segments))
    counts = [len(chunk_offsets(segments[i], chunk, hop)) for i in order]
    total = sum(counts)
    pos = 0
    for split, fraction in SPLIT_FRACTIONS.items():
        target, got = fraction * total, 0
        while pos < len(order) - 1 and (got == 0 or got + counts[pos] / 2 <= target):
            segments[order[pos]].split = split
            got += counts[pos]
            pos += 1
    # everything from `pos` on stays in train


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    out = Path(args.out)
    channels = 2 if args.stereo else 1
    sr = args.sample_rate
    if not 1000 <= sr <= 384000:
        raise UserError(f"sample rate {sr} is out of range (1000 to 384000).")
    unit, default = KIND_CHUNKS[args.kind]
    if args.chunk_seconds is not None:
        if args.chunk_seconds <= 0:
            raise UserError("--chunk-seconds must be positive.")
        chunk = round(args.chunk_seconds * sr)
    else:
        chunk = int(default) if unit == "samples" else round(default * sr)
    if not 0 < args.hop_fraction <= 1:
        raise UserError("--hop-fraction must be in (0, 1].")
    hop = max(1, round(chunk * args.hop_fraction))
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists() and not args.force:
        raise UserError(f"{out} exists and is not a data set folder; choose another --out or pass --force.")

    files = find_audio(args.inputs)
    sources: list[Source] = []
    skipped: list[dict] = []

    def skip(path: Path, why: str) -> None:
        skipped.append({"path": str(path), "reason": why})
        tqdm.write(f"neuralinst prepare: skipped {path}: {why}.", file=sys.stderr)

    for path in tqdm(files, desc="decoding", unit="file", file=sys.stderr, disable=None):
        try:
            audio, seconds = decode(path, sr, channels)
        except Exception as e:  # soundfile raises several types for unreadable or truncated files
            skip(path, f"unreadable ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})")
            continue
        cleaned = remove_silence(audio, sr, args.silence_db, args.min_silence)
        if cleaned.shape[1] == 0:
            skip(path, f"silent (nothing above {args.silence_db:g} dBFS)")
            continue
        if cleaned.shape[1] < chunk:
            skip(path, f"too short ({cleaned.shape[1] / sr:.2f} s of sound, a chunk is {chunk / sr:.2f} s)")
            continue
        sources.append(Source(path, seconds, to_int16(cleaned)))
    if not sources:
        raise UserError(f"none of the {len(files)} input file(s) gave usable audio (see the messages above).")

    total = sum(s.audio.shape[1] for s in sources)
    if args.segment_seconds is not None:
        segment = max(chunk, round(args.segment_seconds * sr))
    else:
        segment = int(np.clip(total // SEGMENTS_WANTED, chunk, MAX_SEGMENT_CHUNKS * chunk))
    segments = make_segments(sources, chunk, segment)
    if len(segments) < 3:
        raise UserError(
            f"{total / sr:.1f} s of sound gives only {len(segments)} region(s) of {segment / sr:.2f} s, too few to "
            f"split into train, valid and test; add audio or shorten --chunk-seconds/--segment-seconds."
        )
    rng = np.random.default_rng(args.seed)
    assign_splits(segments, chunk, hop, rng)

    chunks = {split: [(j, o) for j, s in enumerate(segments) if s.split == split
                      for o in chunk_offsets(s, chunk, hop)] for split in SPLITS}
    for split in SPLITS:
        chunks[split] = [chunks[split][i] for i in rng.permutation(len(chunks[split]))]

    # mean/std of the training audio itself (each sample once, not weighted by chunk overlap)
    acc = np.zeros(3)
    for s in segments:
        if s.split == "train":
            x = sources[s.source].audio[:, s.start:s.end].astype(np.float64) / 32768.0
            acc += (x.size, x.sum(), (x * x).sum())
    mean = acc[1] / acc[0]
    std = float(np.sqrt(max(acc[2] / acc[0] - mean ** 2, 0.0)))

    out.mkdir(parents=True, exist_ok=True)
    n_written = sum(len(v) for v in chunks.values())
    with tqdm(total=n_written, desc="writing", unit="chunk", file=sys.stderr, disable=None) as bar:
        for split in SPLITS:
            array = np.lib.format.open_memmap(out / f"{split}.npy.tmp", mode="w+", dtype=np.int16,
                                              shape=(len(chunks[split]), channels, chunk))
            for k, (j, o) in enumerate(chunks[split]):
                array[k] = sources[segments[j].source].audio[:, o:o + chunk]
                bar.update()
            array.flush()
            del array
            shutil.move(out / f"{split}.npy.tmp", out / f"{split}.npy")

    manifest = {
        "format_version": 1,
        "name": out.resolve().name,
        "kind": args.kind,
        "sample_rate": sr,
        "channels": channels,
        "chunk_samples": chunk,
        "chunk_seconds": chunk / sr,
        "hop_samples": hop,
        "segment_samples": segment,
        "seed": args.seed,
        "silence_db": args.silence_db,
        "min_silence": args.min_silence,
        "mean": float(mean),
        "std": std,
        "total_seconds": sum(s.seconds for s in sources),
        "kept_seconds": total / sr,
        "splits": {split: {"chunks": len(chunks[split]),
                           "seconds": sum(s.end - s.start for s in segments if s.split == split) / sr}
                   for split in SPLITS},
        "sources": [{"path": str(s.path), "seconds": s.seconds, "kept_seconds": s.audio.shape[1] / sr}
                    for s in sources],
        "skipped": skipped,
        "segments": [{"source": s.source, "start": s.start, "end": s.end, "split": s.split} for s in segments],
        # chunk k of split S is segment chunks[S][k][0]'s source audio from sample chunks[S][k][1] (cleaned audio)
        "chunks": {split: [[j, o] for j, o in chunks[split]] for split in SPLITS},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    counts = ", ".join(f"{split} {len(chunks[split])}" for split in SPLITS)
    print(f"wrote {out}: {counts} chunks of {chunk / sr:.3f} s ({channels} ch, {sr} Hz) from {len(sources)} file(s), "
          f"{total / sr:.1f} s of sound kept of {manifest['total_seconds']:.1f} s; mean {mean:.4g}, std {std:.4g} "
          f"({time.monotonic() - t0:.1f} s)")
    return 0
