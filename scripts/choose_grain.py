"""Choose a VRNN preset's `grain` default on the data set's VALIDATION split (the card's score uses the test split).

    .venv/bin/python scripts/choose_grain.py presets/vrnn-piano/model.onnx --data data/piano-vrnn

grain is the fraction of the decoder's draw that is heard (0: the decoder mean, quiet where the decoder is unsure;
1: the drawn frame, with the decoder's per-sample noise). For each value, SECONDS of the model (seed 1, not the
card's 0) are scored by `instrument.evaluate.evaluate_audio` against the validation split alone (split into
reference and floor halves). The rule: the lowest score among the values whose timbre score is no worse than the
mean's (grain 0): grain is there to bring back level and motion, not to add hiss.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from instrument.evaluate import evaluate_audio, load_split_audio  # noqa: E402
from instrument.model import load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", required=True, help="a prepared data set folder (its valid.npy is used)")
    p.add_argument("--grains", default="0,0.125,0.25,0.375,0.5,0.75,1")
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args(argv)
    valid, sr = load_split_audio(args.data, "valid")
    rows = []
    for g in (float(x) for x in args.grains.split(",")):
        rt = load_model(args.model, device="cpu", threads=1)
        rt.set_control("grain", g)
        rt.reset(1)
        audio = rt.generate(int(args.seconds * rt.sample_rate))[0]
        r = evaluate_audio(audio, valid, rt.sample_rate, reference_sr=sr, seed=1, seconds=args.seconds)
        rows.append((g, r.score, r.score_timbre, r.score_dynamics))
        print(f"grain {g:5.3f}  valid-split score {r.score:.3f}  timbre {r.score_timbre:.3f}  "
              f"dynamics {r.score_dynamics:.3f}", flush=True)
    mean_timbre = next((t for g, _, t, _ in rows if g == 0.0), None)
    allowed = [r for r in rows if mean_timbre is None or r[2] <= mean_timbre]
    best = min(allowed or rows, key=lambda r: r[1])
    print(f"chosen grain {best[0]:g} (valid-split score {best[1]:.3f}; the rule: lowest score with timbre no worse "
          f"than grain 0's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
