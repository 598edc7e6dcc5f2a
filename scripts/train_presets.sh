#!/usr/bin/env bash
# Rebuild the shipped presets with the project's own pipeline: dataset -> fit -> export -> eval.
# Each preset's card.md records the exact commands its files came from. CPU recipe; a GPU is used
# by `trainer fit` when torch sees one. Usage: scripts/train_presets.sh [piano strings marimba drums]
# MINUTES bounds each training run: 60 by default, 12 for the drum kit (DRUMS_MINUTES), whose
# discriminator overfits the 218 hits in longer runs (class accuracy 0.97 at 10 minutes, 0.88 at 20),
# and 24 for the piano (PIANO_MINUTES): at 0.3 adversarial weight it measured 6.05 dB log-mel at 24
# minutes; at 1.0 the discriminator won from ~2,000 steps and a 60-minute run drifted to 8.5 dB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MINUTES=${MINUTES:-60}
DRUMS_MINUTES=${DRUMS_MINUTES:-12}
PIANO_MINUTES=${PIANO_MINUTES:-24}
SF=${SOUNDFONT:-/usr/share/sounds/sf2/FluidR3_GM.sf2}
export PYO_GUI_WX=0

one() {  # name, minutes, eval pitches, dataset flags...; returns non-zero at the first failing step
  local name=$1; shift
  local minutes=$1; shift
  local pitches=$1; shift
  if [ ! -f "data/$name/manifest.json" ]; then
    $PY -m trainer dataset --soundfont "$SF" --out "data/$name" "$@" || return 1
  fi
  if [ -f "runs/$name/checkpoints/last.pt" ]; then
    $PY -m trainer fit --resume "runs/$name" --minutes "$minutes" || return 1
  else
    $PY -m trainer fit --data "data/$name" --minutes "$minutes" --steps 100000 --out "runs/$name" --name "$name" || return 1
  fi
  $PY -m trainer export "runs/$name" --preset "presets/$name" --force || return 1
  $PY -m trainer eval "presets/$name" --data "data/$name" ${pitches:+--pitches "$pitches"} --update-preset || return 1
  $PY scripts/make_preset_demo.py "presets/$name" || return 1     # presets/$name/demo.flac
}

# One preset failing (a refused export, say) does not stop the others; the exit status says so.
failed=()
for p in "${@:-piano strings marimba drums}"; do
  for name in $p; do
    case $name in
      piano)   one piano "$PIANO_MINUTES" 28-96 --program 0 || failed+=(piano) ;;
      strings) one strings "$MINUTES" "" --program 48 --pitches 36-96 || failed+=(strings) ;;
      marimba) one marimba "$MINUTES" "" --program 12 --pitches 45-96 --seconds 3 || failed+=(marimba) ;;
      drums)   one drums "$DRUMS_MINUTES" "" --drums --seconds 2 || failed+=(drums) ;;
      *) echo "unknown preset $name (piano strings marimba drums)" >&2; exit 2 ;;
    esac
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "train_presets: failed: ${failed[*]} (see the messages above)" >&2
  exit 1
fi
