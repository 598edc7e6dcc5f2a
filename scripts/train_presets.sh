#!/usr/bin/env bash
# Rebuild the shipped presets with the project's own pipeline: dataset -> fit -> export [-> refine] -> eval.
# Each preset's recipe (trainer/recipes/NAME.json) holds its dataset flags, budget and config; this
# script only runs them, and each card.md records the commands its files came from. CPU recipe; a GPU
# is used by `trainer fit` when torch sees one. Usage: scripts/train_presets.sh [piano strings marimba drums keys ensemble]
# MINUTES=N overrides every recipe's training budget; SOUNDFONT=PATH the SoundFont to render.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYO_GUI_WX=0

one() {  # name; returns non-zero at the first failing step
  local name=$1 data
  data=$($PY -m trainer recipe "$name" --print data) || return 1
  if [ ! -f "$data/manifest.json" ]; then
    # shellcheck disable=SC2046  # the recipe's flags, one word each
    $PY -m trainer dataset $($PY -m trainer recipe "$name" --print dataset-args) \
      ${SOUNDFONT:+--soundfont "$SOUNDFONT"} || return 1
  fi
  if [ -f "runs/$name/checkpoints/last.pt" ]; then
    $PY -m trainer fit --resume "runs/$name" ${MINUTES:+--minutes "$MINUTES"} || return 1
  else
    $PY -m trainer fit --recipe "$name" --data "$data" --out "runs/$name" ${MINUTES:+--minutes "$MINUTES"} || return 1
  fi
  $PY -m trainer export "runs/$name" --preset "presets/$name" --force || return 1
  if [ -n "$($PY -m trainer recipe "$name" --print refine-args)" ]; then   # the recipe refines its preset
    $PY -m trainer refine "presets/$name" --data "$data" --recipe "$name" || return 1
  fi
  # shellcheck disable=SC2046
  $PY -m trainer eval "presets/$name" --data "$data" $($PY -m trainer recipe "$name" --print eval-args) \
    --update-preset || return 1
  if [ "$name" = keys ] || [ "$name" = ensemble ]; then   # a family preset: its timbre bars and card pictures (trainer/family_eval.py)
    # shellcheck disable=SC2046
    $PY -m trainer eval "presets/$name" --data "$data" $($PY -m trainer recipe "$name" --print eval-args) \
      --timbres --update-preset || return 1
  fi
  $PY scripts/make_preset_demo.py "presets/$name" || return 1     # presets/$name/demo.flac
}

# One preset failing (a refused export, say) does not stop the others; the exit status says so.
failed=()
for p in "${@:-piano strings marimba drums keys ensemble}"; do
  for name in $p; do
    case $name in
      piano|strings|marimba|drums|keys|ensemble) one "$name" || failed+=("$name") ;;
      *) echo "unknown preset $name (piano strings marimba drums keys ensemble)" >&2; exit 2 ;;
    esac
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "train_presets: failed: ${failed[*]} (see the messages above)" >&2
  exit 1
fi
