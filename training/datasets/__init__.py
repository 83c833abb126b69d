"""Training data sets rendered from real, licensed sources on this machine (see LICENSES.md).

One recipe module per set, each with `NAME`, `DESCRIPTION`, `KIND_HINT` (the `neuralinst prepare --kind` it is
meant for), `PREPARE_ARGS` (extra `prepare` arguments) and `build(out_dir, seed=0, minutes=..., log=print) -> summary dict`. Build with
`scripts/build_datasets.sh [SET ...]` or `python -m training.datasets SET ... --out data/raw`.
"""
from __future__ import annotations

from training.datasets import drums, heavy, piano, piano_notes, piano_notes_c4

SETS = {m.NAME: m for m in (piano, piano_notes, piano_notes_c4, drums, heavy)}
