#!/usr/bin/env bash
# Render the training data sets and prepare them for training:
#   scripts/build_datasets.sh [SET ...]      (default: piano piano-notes piano-notes-c4 drums heavy)
# Raw renders (44.1 kHz float WAV, as FluidSynth writes them) go to data/raw/<set>/ with SOURCES.json; then
# `neuralinst prepare` (downmix, 16 kHz, silence removal, chunks, 88/6/6 split) writes data/<set>/.
# Environment: SEED (default 0) for the generated sets, MINUTES to override each set's target length,
# KIND to override the prepare kind (default per set: samplernn, or wavegan for piano-notes),
# PREPARE_ARGS for extra `neuralinst prepare` arguments. Sources and licences: training/datasets/LICENSES.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$root/.venv/bin/python"
cli="$root/.venv/bin/neuralinst"
[ -x "$py" ] || { echo "build_datasets: no .venv; run ./dev setup first" >&2; exit 1; }
sets=("$@")
[ ${#sets[@]} -eq 0 ] && sets=(piano piano-notes piano-notes-c4 drums heavy)
seed="${SEED:-0}"
extra=()
[ -n "${MINUTES:-}" ] && extra+=(--minutes "$MINUTES")

for set in "${sets[@]}"; do
  read -r _ hint_kind hint_args <<< "$("$py" -m training.datasets "$set" --kind-hint)"
  kind="${KIND:-$hint_kind}"
  start=$(date +%s)
  "$py" -m training.datasets "$set" --out data/raw --seed "$seed" "${extra[@]}"
  if [ -x "$cli" ] && "$py" -c "import training.prepare" 2>/dev/null; then
    # shellcheck disable=SC2086
    "$cli" prepare "data/raw/$set" --out "data/$set" --kind "$kind" --seed "$seed" --force $hint_args ${PREPARE_ARGS:-}
  else
    echo "build_datasets: neuralinst prepare is not available; raw audio is in data/raw/$set" >&2
  fi
  echo "build_datasets: $set done in $(( $(date +%s) - start )) s"
done
