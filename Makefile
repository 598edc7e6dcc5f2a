# One-command set-up: `make demo` and `make test` do everything, and a second run does no work twice.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMPS := .stamps
export PYO_GUI_WX := 0

.PHONY: demo test bench bench-quick lint soak presets sysdeps clean help

help:
	@echo "make demo    set up and render examples/demo.mid with the piano preset to demo.wav"
	@echo "make test    set up (train + dev extras) and run the whole test suite"
	@echo "make bench   benchmarks: JSON in bench-out/, table in docs/benchmarks.md (bench-quick: fewer repeats)"
	@echo "make lint    ruff"
	@echo "make soak    30-s MIDI flood, then a 10-minute live soak, under JACK dummy (AUDIO_API=jack-client: one JACK client)"
	@echo "make presets retrain the shipped presets (long)"

$(STAMPS)/sysdeps: scripts/system_deps.sh
	@mkdir -p $(STAMPS)
	@bash scripts/system_deps.sh
	@touch $@

sysdeps: $(STAMPS)/sysdeps

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# Runtime only (what a player needs).
$(STAMPS)/venv-base: pyproject.toml synth/_mixc.c | $(VPY)
	@mkdir -p $(STAMPS)
	$(VPY) -m pip install -q -e .
	@touch $@

# Everything: trainer (torch pinned to the on-disk 2.13.0 CPU build) and dev tools.
$(STAMPS)/venv-full: pyproject.toml synth/_mixc.c | $(VPY)
	@mkdir -p $(STAMPS)
	$(VPY) -m pip install -q -e '.[train,dev]'
	@touch $@ $(STAMPS)/venv-base

examples/demo.mid: scripts/make_demo_midi.py | $(STAMPS)/venv-base
	$(VPY) scripts/make_demo_midi.py $@

demo.wav: examples/demo.mid $(wildcard presets/piano/*) | $(STAMPS)/sysdeps $(STAMPS)/venv-base
	$(VPY) -m synth render examples/demo.mid -o demo.wav --preset piano

demo: $(STAMPS)/sysdeps $(STAMPS)/venv-base demo.wav
	@echo
	@echo "demo rendered: $(CURDIR)/demo.wav"
	@echo "play live:     $(VPY) -m synth --preset piano"

test: $(STAMPS)/sysdeps $(STAMPS)/venv-full
	$(VPY) -m pytest -q tests

bench: $(STAMPS)/sysdeps $(STAMPS)/venv-full
	$(VPY) scripts/bench.py --out bench-out --table docs/benchmarks.md

bench-quick: $(STAMPS)/sysdeps $(STAMPS)/venv-full
	$(VPY) scripts/bench.py --quick --out bench-out

soak: $(STAMPS)/sysdeps $(STAMPS)/venv-full
	$(VPY) scripts/soak.py --minutes 10 --flood-seconds 30 --audio-api $(or $(AUDIO_API),auto)

lint: $(STAMPS)/venv-full
	$(VPY) -m ruff check synth trainer tests scripts

presets: $(STAMPS)/sysdeps $(STAMPS)/venv-full
	bash scripts/train_presets.sh

clean:
	rm -rf $(STAMPS) demo.wav bench-out
