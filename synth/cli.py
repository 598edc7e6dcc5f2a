"""`python -m synth` / `neural-synth`: a thin dispatcher.

Each subcommand lives in its own module and is imported only when called, so `--help` answers at
once. Each module exposes `main(argv: list[str]) -> int`. A `UserError` anywhere becomes one line on
stderr and exit status 2; Ctrl-C exits with 130 and no traceback.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). "play" is the default when the first argument is a flag.
COMMANDS: dict[str, tuple[str, str]] = {
    "play": ("synth.live", "play live: MIDI in (rtmidi), audio out (sounddevice)  [default]"),
    "render": ("synth.render", "render a MIDI file to WAV/FLAC offline with the same engine"),
    "presets": ("synth.presets_cmd", "list installed presets"),
    "bake": ("synth.bake", "bake a preset into a SoundFont (.sf2) or SFZ instrument for any sampler"),
    "devices": ("synth.devices_cmd", "what `play` would open (same flags), then audio and MIDI devices"),
}

USAGE = """usage: python -m synth [play] [--preset NAME] [options]      (default preset: piano)
       python -m synth render IN.mid -o OUT.wav [--preset NAME] [options]
       python -m synth presets
       python -m synth bake --preset NAME -o OUT.sf2|OUT.sfz [options]   (--all: one GM bank)
       python -m synth devices [play's --audio-api/--midi-api/--device/... flags]

A real-time synthesizer whose sounds come from GAN generators (ONNX Runtime).

commands:
{commands}

`python -m synth COMMAND --help` shows a command's options.
"""


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"  {n:<{width}}  {h}" for n, (_, h) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def run_command(module: str, argv: list[str], prog: str) -> int:
    """Import `module` lazily and run its `main(argv)`, turning user errors into one line."""
    from synth.errors import UserError

    try:
        mod = importlib.import_module(module)
        return int(mod.main(argv) or 0)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        from synth import __version__

        print(__version__)
        return 0
    if not argv or argv[0].startswith("-"):
        name, rest = "play", argv
    else:
        name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"synth: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run_command(COMMANDS[name][0], rest, prog=f"synth {name}")


if __name__ == "__main__":
    raise SystemExit(main())
