"""`python -m training.datasets SET... [--out data/raw] [--seed 0] [--minutes M]`: render raw sets to WAV."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from training.datasets import SETS
from training.datasets.render import check_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.datasets", description=__doc__)
    parser.add_argument("sets", nargs="*", default=list(SETS), help=f"which sets (default all: {', '.join(SETS)})")
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="parent folder; each set goes in OUT/SET")
    parser.add_argument("--seed", type=int, default=0, help="seed for the generated sets (drums, heavy)")
    parser.add_argument("--minutes", type=float, default=None, help="target length per set (default: the recipe's)")
    parser.add_argument("--kind-hint", action="store_true", help="print SET KIND PREPARE_ARGS... lines for the build script and exit")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sets if s not in SETS]
    if unknown:
        print(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}.", file=sys.stderr)
        return 2
    if args.kind_hint:
        for s in args.sets:
            print(s, SETS[s].KIND_HINT, *SETS[s].PREPARE_ARGS)
        return 0
    check_tools()
    for name in args.sets:
        recipe = SETS[name]
        out = args.out / name
        if out.exists():
            shutil.rmtree(out)  # a set is always rebuilt whole, never mixed with an older build
        print(f"{name}: {recipe.DESCRIPTION}")
        kwargs = {"seed": args.seed}
        if args.minutes is not None:
            kwargs["minutes"] = args.minutes
        t = time.time()
        summary = recipe.build(out, **kwargs)
        summary["wall_seconds"] = time.time() - t
        (out / "SOURCES.json").write_text(json.dumps(summary, indent=1))
        print(f"{name}: {summary['minutes']:.1f} min of audio in {summary['wall_seconds']:.0f} s "
              f"({summary['minutes'] * 60 / summary['wall_seconds']:.0f}x real time) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
