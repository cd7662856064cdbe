"""The one exception type that means "the user's input is wrong"."""

from __future__ import annotations


class UsageError(Exception):
    """Bad user input; the CLI prints the message on one line and exits with code 2."""
