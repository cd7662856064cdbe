"""The one exception type that means "the user's input is wrong"."""

from __future__ import annotations


class UsageError(Exception):
    """Bad user input; the CLI prints the message on one line and exits with code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name (tools append whole graph dumps)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
