"""Choose which of a run's checkpoints to ship, on the data set's VALIDATION split (the card's score uses the test split).

    .venv/bin/python scripts/choose_checkpoint.py runs/vrnn-piano --data data/piano-vrnn --grain 0.375 \
        --export-args=--native-int8 --from-step 22000 --json runs/vrnn-piano.checkpoints.json

Why: a GAN's or a VRNN's samples do not improve monotonically with its training loss (vrnn-piano at 22,426 steps
had a better validation loss than at 13,110 but scored worse on validation at the grain it plays), so the shipped
checkpoint is picked by the measure the card reports, on data the card's figure never sees.

Each checkpoint (`RUN/checkpoints/step_*`, optionally from --from-step) is exported exactly as the preset ships it
(`neuralinst export CKPT --export-args`), rendered as `neuralinst eval` renders it, with the preset's controls,
for SECONDS per seed (seeds 1, 2 by
default: never the card's seed 0) and scored by `instrument.evaluate.evaluate_audio` against the validation split
alone (split into reference and floor halves), as `scripts/choose_grain.py` does. One seed's score moves by a few
hundredths, so the mean over seeds is what is ranked. Scores already in --json are reused (a later call only scores
new checkpoints). The chosen checkpoint is the lowest mean.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from instrument.evaluate import evaluate_audio, load_split_audio, render_model  # noqa: E402

CLI = str(ROOT / ".venv" / "bin" / "neuralinst")


def checkpoints(run: Path, from_step: int) -> list[Path]:
    found = sorted(p for p in (run / "checkpoints").glob("step_*") if (p / "state.json").is_file())
    return [p for p in found if int(p.name.split("_")[1]) >= from_step]


def score_checkpoint(folder: Path, export_args: list[str], controls: dict[str, float], valid: np.ndarray, sr: int,
                     seeds: list[int], seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        out = subprocess.run([CLI, "export", str(folder), "--out", str(model), *export_args],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return {"error": (out.stderr or out.stdout).strip().splitlines()[-1]}
        rows = []
        for seed in seeds:  # rendered as `neuralinst eval` renders a preset (WaveGAN: clips of random z, end to end)
            audio, rate, _ = render_model(model, seconds, seed=seed, defaults=controls)
            r = evaluate_audio(audio[0], valid, rate, reference_sr=sr, seed=seed, seconds=seconds)
            rows.append((r.score, r.score_timbre, r.score_dynamics))
    s = np.array(rows)
    return {"scores": [round(float(x), 4) for x in s[:, 0]], "mean": round(float(s[:, 0].mean()), 4),
            "timbre": round(float(s[:, 1].mean()), 4), "dynamics": round(float(s[:, 2].mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a training run folder")
    p.add_argument("--data", required=True, help="the prepared data set (its valid.npy is used)")
    p.add_argument("--grain", type=float, default=None, help="the preset's grain control (VRNN), if any")
    p.add_argument("--temperature", type=float, default=None, help="the preset's temperature control, if any")
    p.add_argument("--export-args", default="", help="the preset's export flags, e.g. --export-args=--native-int8")
    p.add_argument("--from-step", type=int, default=0)
    p.add_argument("--only", default="", help="these checkpoints only (comma-separated names): a second, "
                   "longer look at the best few, e.g. with --seeds 1,2,3,4")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--json", type=Path, default=None, help="keep every score here (and reuse the ones already there)")
    args = p.parse_args(argv)
    valid, sr = load_split_audio(args.data, "valid")
    controls = {k: v for k, v in (("grain", args.grain), ("temperature", args.temperature)) if v is not None}
    seeds = [int(s) for s in args.seeds.split(",")]
    setting = {"controls": controls, "export_args": args.export_args, "seeds": seeds, "seconds": args.seconds,
               "data": str(args.data), "split": "valid"}
    table = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    if table.get("setting") != setting:
        table = {"setting": setting, "checkpoints": {}}
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    for folder in checkpoints(args.run, args.from_step):
        if only and folder.name not in only:
            continue
        if folder.name not in table["checkpoints"]:
            table["checkpoints"][folder.name] = score_checkpoint(
                folder, shlex.split(args.export_args), controls, valid, sr, seeds, args.seconds)
            if args.json:
                args.json.write_text(json.dumps(table, indent=1))
        row = table["checkpoints"][folder.name]
        if "error" in row:
            print(f"{folder.name}  export failed: {row['error']}", flush=True)
        else:
            print(f"{folder.name}  valid-split score {row['mean']:.3f} (seeds {', '.join(f'{x:.3f}' for x in row['scores'])})"
                  f"  timbre {row['timbre']:.3f}  dynamics {row['dynamics']:.3f}", flush=True)
    scored = {k: v for k, v in table["checkpoints"].items() if "mean" in v and (not only or k in only)}
    if not scored:
        print("no checkpoint could be scored", file=sys.stderr)
        return 1
    best = min(scored, key=lambda k: scored[k]["mean"])
    print(f"chosen {best} (mean valid-split score {scored[best]['mean']:.3f} over seeds {args.seeds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
