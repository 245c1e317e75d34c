"""Errors meant for users: the CLI prints these as one clear message, never as a traceback."""

from __future__ import annotations


class RlauditError(Exception):
    """A user-facing error: bad input, unknown layout, missing run. The message says what and where."""


class BadInputError(RlauditError):
    """A record or file that does not match what its format promises (raised in --strict mode)."""


class UnknownLayoutError(RlauditError):
    """No reader recognises the source directory."""
