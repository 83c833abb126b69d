"""Quality of the shipped presets, re-measured: `neuralinst eval` for each preset, compared with its card.

    neuralinst bench quality [--presets a,b] [--data DATA] [--seconds 30] [--seed 0] [--tolerance 0.05]
    neuralinst bench quality --cross-sets data/piano data/drums data/heavy     (the measure's own sanity check)

For each shipped preset, the card's machine-readable line (written by `neuralinst eval --card`, see
instrument/evaluate.py `card_section`) says which data set, seconds and seed were used and what score came out;
the same evaluation is run again through the live runtime and the two scores compared (the runtime is seeded,
so on the same data set they should agree to rounding; a difference means the model, the runtime or the data
changed). A preset without card figures is evaluated against `--data` (or `data/<its training set name>`)
and reported as such.

`--cross-sets` checks the measure itself on real data: the validation split of each set scored against the
test split of every set. The diagonal (same set) must be the lowest in every column.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import print_table, write_result
from instrument import evaluate as ev
from instrument.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", default=None, help="comma-separated preset names (default: every shipped preset)")
    p.add_argument("--data", default=None, help="data set for presets whose card has no figures")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed |score - card score|")
    p.add_argument("--cross-sets", nargs="+", default=None, metavar="DATA",
                   help="instead: score each data set's validation split against every set's test split")
    p.add_argument("--name", default=None, help="result file name under benchmarks/results/")


def _preset_rows(args) -> list[dict]:
    from instrument.presets import MODEL_FILE, load_preset, read_model_metadata, shipped_dir

    root = shipped_dir()
    names = args.presets.split(",") if args.presets else sorted(
        p.name for p in root.iterdir() if (p / "preset.toml").is_file()) if root.is_dir() else []
    rows = []
    for name in names:
        preset = load_preset(name)
        card_path = preset.model_path.parent / "MODEL_CARD.md"
        card = ev.read_card_figures(card_path.read_text()) if card_path.is_file() else None
        meta = read_model_metadata(preset.model_path)
        data = (card or {}).get("data") or args.data or f"data/{meta.get('training_data', {}).get('name', name)}"
        seconds = float((card or {}).get("seconds", args.seconds))
        seed = int((card or {}).get("seed", args.seed))
        row = {"preset": name, "kind": meta.get("kind"), "data": data, "seconds": seconds, "seed": seed,
               "card_score": (card or {}).get("score")}
        try:
            reference, floor, ref_sr, _ = ev.load_reference(data, seconds, seed)
            audio, sr, _ = ev.render_model(preset.model_path, seconds, seed, defaults=preset.defaults)
            result = ev.evaluate_audio(audio, reference, sr, floor=floor, reference_sr=ref_sr, seed=seed,
                                       seconds=seconds)
            row.update(score=result.score, score_timbre=result.score_timbre, score_dynamics=result.score_dynamics,
                       fd=result.model.fd, fd_dynamics=result.model.fd_dynamics, fd_level_db=result.model.fd_level,
                       flatness=result.model.flatness, silent=result.model.silent)
            if row["card_score"] is None:
                row["verdict"] = "no card figures"
            else:
                row["delta"] = result.score - float(row["card_score"])
                row["verdict"] = "ok" if abs(row["delta"]) <= args.tolerance else "DIFFERS"
        except UserError as e:
            row.update(verdict=f"not measured: {e}")
        rows.append(row)
    return rows


def _cross_sets(args) -> dict:
    """Each set's validation split is drawn twice as long as --seconds and cut in two disjoint halves: one is
    that set's floor, the other is the candidate scored against every set (so the diagonal is a real draw,
    not the floor itself)."""
    sets = [str(Path(d)) for d in args.cross_sets]
    loaded = {}
    for d in sets:
        reference, valid, sr, _ = ev.load_reference(d, 2 * args.seconds, args.seed)
        if valid is None:
            raise UserError(f"{d} has no validation split to score.")
        half = len(valid) // 2
        loaded[d] = (reference, valid[:half], valid[half: 2 * half], sr)
    matrix = {}
    for ref_name, (reference, floor, _, ref_sr) in loaded.items():
        column = {}
        for cand_name, (_, _, candidate, cand_sr) in loaded.items():
            r = ev.evaluate_audio(candidate, reference, cand_sr, floor=floor, reference_sr=ref_sr, seed=args.seed,
                                  seconds=args.seconds)
            column[cand_name] = {"fd": r.model.fd, "score": r.score, "score_timbre": r.score_timbre,
                                 "score_dynamics": r.score_dynamics, "fd_level_db": r.model.fd_level,
                                 "fd_logmel": r.model.fd_logmel, "seconds": r.seconds}
        column["_baselines"] = {k: dict(zip(("score", "timbre", "dynamics"), r.scores(m)))
                                for k, m in r.baselines.items()}
        matrix[ref_name] = column
    return matrix


def run(args) -> int:
    if args.cross_sets:
        matrix = _cross_sets(args)
        sets = list(matrix)
        print("score (timbre/dynamics) of each set's validation split (rows) against each set's test split"
              " (columns); raw log-mel FD in square brackets")
        rows = []
        for cand in sets:
            rows.append([cand] + [f"{matrix[ref][cand]['score']:.2f} ({matrix[ref][cand]['score_timbre']:.2f}/"
                                  f"{matrix[ref][cand]['score_dynamics']:.2f}) [{matrix[ref][cand]['fd_logmel']:.0f}]"
                                  for ref in sets])
        print_table(["valid of \\ test of"] + sets, rows)
        ok = all(min(sets, key=lambda c: matrix[ref][c]["score"]) == ref for ref in sets)
        raw_ok = all(min(sets, key=lambda c: matrix[ref][c]["fd_logmel"]) == ref for ref in sets)
        print(f"same set closest in every column: score {ok}, raw log-mel FD {raw_ok}")
        path = write_result(args.name or "eval_cross_sets", {"seconds": args.seconds, "seed": args.seed,
                                                             "matrix": matrix, "same_set_closest": ok,
                                                             "raw_logmel_same_set_closest": raw_ok})
        print(f"wrote {path}")
        return 0 if ok else 1
    rows = _preset_rows(args)
    if not rows:
        print("no shipped presets to measure")
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    print_table(["preset", "kind", "data", "score", "timbre", "dynamics", "card", "delta", "level dB", "verdict"],
                [[r["preset"], r["kind"], r["data"], fmt(r.get("score")), fmt(r.get("score_timbre")),
                  fmt(r.get("score_dynamics")), fmt(r.get("card_score")), fmt(r.get("delta")),
                  fmt(r.get("fd_level_db")), r["verdict"]]
                 for r in rows])
    path = write_result(args.name or "preset_quality", {"tolerance": args.tolerance, "presets": rows})
    print(f"wrote {path}")
    return 1 if any(r["verdict"] == "DIFFERS" for r in rows) else 0
