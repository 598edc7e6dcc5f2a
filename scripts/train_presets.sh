#!/usr/bin/env bash
# Rebuild the shipped presets with the project's own pipeline: dataset -> fit -> export -> eval.
# Each preset's card.md records the exact commands its files came from. CPU recipe; a GPU is used
# by `trainer fit` when torch sees one. Usage: scripts/train_presets.sh [piano strings marimba drums]
# MINUTES (default 60) bounds each training run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MINUTES=${MINUTES:-60}
SF=${SOUNDFONT:-/usr/share/sounds/sf2/FluidR3_GM.sf2}
export PYO_GUI_WX=0

one() {  # name, dataset flags..., -- eval pitches
  local name=$1; shift
  local pitches=$1; shift
  [ -f "data/$name/manifest.json" ] || $PY -m trainer dataset --soundfont "$SF" --out "data/$name" "$@"
  if [ -f "runs/$name/checkpoints/last.pt" ]; then
    $PY -m trainer fit --resume "runs/$name" --minutes "$MINUTES"
  else
    $PY -m trainer fit --data "data/$name" --minutes "$MINUTES" --steps 100000 --out "runs/$name" --name "$name"
  fi
  $PY -m trainer export "runs/$name" --preset "presets/$name" --force
  $PY -m trainer eval "presets/$name" --data "data/$name" ${pitches:+--pitches "$pitches"} --update-preset
  $PY scripts/make_preset_demo.py "presets/$name"     # presets/$name/demo.flac
}

for p in "${@:-piano strings marimba drums}"; do
  for name in $p; do
    case $name in
      piano)   one piano 28-96 --program 0 ;;
      strings) one strings "" --program 48 --pitches 36-96 ;;
      marimba) one marimba "" --program 12 --pitches 45-96 --seconds 3 ;;
      drums)   one drums "" --drums --seconds 2 ;;
      *) echo "unknown preset $name (piano strings marimba drums)" >&2; exit 2 ;;
    esac
  done
done
