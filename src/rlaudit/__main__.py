"""`python -m rlaudit ...`: the same command line as the `rlaudit` script, for environments where the script's
directory is not on PATH (a venv that is not activated, a notebook's `!python -m rlaudit audit ...`)."""

from .cli import run

run()
