"""`python -m trainer` / `neural-synth-train`: dataset | fit | export | refine | eval | recipe | capture.

Subcommands are imported lazily (torch is heavy), so `--help` answers at once. Each module exposes
`main(argv: list[str]) -> int`; errors follow `synth.cli.run_command`.
"""

from __future__ import annotations

import sys

from synth.cli import run_command

COMMANDS: dict[str, tuple[str, str]] = {
    "dataset": ("trainer.data.cli", "build a one-shot dataset from a SoundFont, a sample folder or NSynth"),
    "fit": ("trainer.fit", "train a GAN on a dataset (single process or torchrun)"),
    "export": ("trainer.export", "export a run's generator to a preset folder (ONNX + manifest + card)"),
    "refine": ("trainer.refine", "refine an exported preset's generator at its default latent on its dataset"),
    "eval": ("trainer.evaluate", "measure a preset: pitch accuracy, log-mel distance, diversity, speed"),
    "recipe": ("trainer.recipes_cmd", "list the training recipes (trainer/recipes), or show one and its commands"),
    "capture": ("trainer.capture", "fit a new instrument from a few notes into a preset (a family's generator, no training)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(n) for n in COMMANDS)
        print("usage: python -m trainer {dataset,fit,export,refine,eval,recipe,capture} [options]\n\ncommands:")
        for n, (_, h) in COMMANDS.items():
            print(f"  {n:<{width}}  {h}")
        print("\n`python -m trainer COMMAND --help` shows a command's options.")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"trainer: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run_command(COMMANDS[name][0], rest, prog=f"trainer {name}")


if __name__ == "__main__":
    raise SystemExit(main())
