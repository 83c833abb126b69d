"""`neuralinst render --model PATH_OR_PRESET --seconds S --out FILE.wav [--seed N] [--temperature T] [--device D]
[--backend auto|onnx|native]`

Offline generation through the live runtime (instrument.model), so a render is what the instrument would play
with the same seed and controls; the same arguments give a byte-identical file.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from instrument.errors import UserError
from instrument.model import RuntimeModel, load_model
from instrument.params import apply_role_defaults

CHUNK_SECONDS = 0.5  # generate and write in pieces: bounded memory, a live progress bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="an exported .onnx file or a preset name")
    parser.add_argument("--seconds", type=float, required=True, help="length of the render")
    parser.add_argument("--out", required=True, help="the .wav (or .flac) file to write")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (the same seed gives the same file)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (if the model has one)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    parser.add_argument("--backend", default="auto", choices=("auto", "onnx", "native"),
                        help="executor: the ONNX graph, the native C loop (MODEL.native.npz: SampleRNN, VRNN), or auto "
                             "(native where it can run; default)")
    parser.add_argument("--subtype", default="PCM_24", help="soundfile subtype (PCM_16, PCM_24, FLOAT)")


def resolve_model(name_or_path: str) -> tuple[Path, dict[str, float]]:
    """An .onnx path as given (no defaults), else a preset by name (instrument.presets): its model and defaults."""
    path = Path(name_or_path)
    if path.suffix == ".onnx" or path.exists():
        if path.is_dir() and (path / "model.onnx").is_file():
            return path / "model.onnx", {}
        return path, {}
    try:
        from instrument.presets import load_preset
    except ImportError:
        raise UserError(f"{name_or_path}: no such model file (and presets are not available).") from None
    preset = load_preset(name_or_path)
    return Path(preset.model_path), dict(preset.defaults)


def render(model: RuntimeModel, seconds: float, seed: int = 0, temperature: float | None = None,
           progress: bool = False) -> np.ndarray:
    """float32 [C, n] of `seconds` of audio from a fresh reset(seed).

    Streaming models (state) play one continuous stream. A stateless clip generator (WaveGAN) would repeat one
    clip for a fixed latent, so each clip gets a new latent drawn uniformly over the control's range from a
    generator seeded by `seed`."""
    n = int(round(seconds * model.sample_rate))
    if temperature is not None:
        _set_temperature(model, temperature)
    model.reset(seed)
    out = np.empty((model.channels, n), dtype=np.float32)
    bar = _progress_bar(n, progress)
    latents = model.meta.controls_with_role("latent") if not model.meta.state else []
    if latents:
        rng = np.random.default_rng([seed, 1])  # apart from the runtime's own noise stream
        for start in range(0, n, model.block_size):
            for c in latents:
                model.set_control(c.name, rng.uniform(c.minimum, c.maximum, size=c.shape))
            clip = model.step()[0]
            take = min(model.block_size, n - start)
            out[:, start:start + take] = clip[:, :take]
            if bar is not None:
                bar.update(take)
    else:
        chunk = max(1, int(CHUNK_SECONDS * model.sample_rate))
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            model.generate(stop - start, out=out[:, start:stop])
            if bar is not None:
                bar.update(stop - start)
    if bar is not None:
        bar.close()
    return out


def _set_temperature(model: RuntimeModel, temperature: float) -> None:
    controls = model.meta.controls_with_role("temperature")
    if not controls:
        raise UserError(f"{model.path.name}: this {model.meta.kind} model has no temperature control.")
    for c in controls:
        if not c.minimum <= temperature <= c.maximum:
            raise UserError(f"--temperature {temperature} is outside the model's range [{c.minimum}, {c.maximum}].")
        model.set_control(c.name, temperature)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", unit_scale=True, desc="render", file=sys.stderr, leave=False,
                disable=None)  # None: no bar when stderr is not a terminal


def run(args: argparse.Namespace) -> int:
    import soundfile as sf

    if not (math.isfinite(args.seconds) and 0 < args.seconds <= 24 * 3600):
        raise UserError(f"--seconds {args.seconds} must be between 0 and 86400.")
    out = Path(args.out)
    if out.suffix.lower() not in (".wav", ".flac"):
        raise UserError(f"--out {out} should end in .wav or .flac.")
    path, defaults = resolve_model(args.model)
    model = load_model(path, device=args.device, threads=args.threads, backend=args.backend)
    if model.backend_note:  # auto chose the graph although the kind has a native loop: say why, once
        print(f"note: {model.backend_note}", file=sys.stderr)
    apply_role_defaults(model, defaults)  # the preset's sound (temperature, grain), as `neuralinst play` starts it
    start = time.perf_counter()
    audio = render(model, args.seconds, seed=args.seed, temperature=args.temperature, progress=True)
    elapsed = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(str(out), audio.T, model.sample_rate, subtype=args.subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as e:
        raise UserError(f"cannot write {out} ({e}).") from None
    rtf = args.seconds / elapsed if elapsed > 0 else float("inf")
    print(f"wrote {out}: {args.seconds:g} s, {model.sample_rate} Hz, {model.channels} ch, seed {args.seed}, "
          f"{rtf:.1f}x real time on {model.providers[0]} ({model.backend} backend)")
    return 0
