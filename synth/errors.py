"""User-facing errors.

A `UserError` is bad input or a bad environment: the CLI prints its message on one line to stderr
and exits with status 2, with no traceback. Its message names the file, the problem and the fix.
"""

from __future__ import annotations

import argparse


class UserError(Exception):
    """Bad input from the user (file, flag, preset). Printed as one line; exit status 2."""

    exit_code = 2


class PresetError(UserError):
    """A preset cannot be found or fails validation."""


class MidiFileError(UserError):
    """A MIDI file cannot be read."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a mistake as a one-line `UserError` naming `prog --help`, instead of
    usage + exit."""

    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")
