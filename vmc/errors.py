"""Errors shown to users as one line (the CLI turns them into exit code 2)."""

from __future__ import annotations

import argparse
import difflib
from typing import Iterable


class InputError(ValueError):
    """Bad user input: a config field, a molecule or a file.

    The message is one line that names the field and what would be valid.
    `vmc` commands print it as ``error: <message>`` and exit with code 2.
    """


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest valid name, or ``""``."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class OneLineParser(argparse.ArgumentParser):
    """argparse that exits with code 2 and one line on errors (its default prints the whole
    usage first): ``error: <message> (see `<prog> --help`)``."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")
