#!/usr/bin/env bash
# Install the Debian packages the project needs, or say exactly how to.
# fluidsynth + fluid-soundfont-gm: training data and the FluidSynth benchmark baseline.
# musescore-general-soundfont: the second family source (MuseScore General, an SF3 of Ogg samples
#   that FluidSynth 2 renders: /usr/share/sounds/sf3/MuseScore_General.sf3, 76 MB download).
# timgm6mb-soundfont: TimGM6mb, held out of every family; capture is measured on it.
# jackd2: JACK dummy server for live tests without a sound card. libportaudio2: sounddevice.
# gcc: builds the mixer's C extension (synth/_mixc.c; without it numpy mixes, a little slower).
set -euo pipefail
pkgs=(fluidsynth fluid-soundfont-gm musescore-general-soundfont timgm6mb-soundfont jackd2 libportaudio2 gcc)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  # jackd2 asks about real-time priority through debconf; answer it up front.
  echo "jackd2 jackd/tweak_rt_limits boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "error: missing system packages: ${missing[*]}" >&2
  echo "install them with:  sudo DEBIAN_FRONTEND=noninteractive $cmd" >&2
  exit 1
fi
